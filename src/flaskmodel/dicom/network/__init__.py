"""DICOM networking: the Storage SCP, STOW-RS parsing, the instance store that both write through,
DICOMweb pulls (WADO-RS) and result exports (DICOM SR by C-STORE or STOW-RS).

Like the rest of ``flaskmodel.dicom`` these modules import pydicom/pynetdicom and never Flask,
Celery or the job layer; the processes that use them (``flaskmodel.gateway``, the worker) wire them
to jobs.
"""

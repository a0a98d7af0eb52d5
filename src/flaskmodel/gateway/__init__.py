"""The DICOM front door process (``flaskmodel dicom``): receives CT studies and hands each stored
instance on.

``receiver`` starts, in one process, the Storage SCP (C-ECHO, C-STORE) and a waitress HTTP
listener for STOW-RS (``app``), both writing through one ``InstanceStore`` under the data root
and calling one ``on_stored`` callback; ``tracker`` and ``routing`` are that callback (complete
series routed to jobs) and ``main`` is the process's composition root. This package imports
pydicom, pynetdicom, Flask and waitress, never TensorFlow.
"""

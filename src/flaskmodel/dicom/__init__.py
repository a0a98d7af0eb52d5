"""DICOM series handling for series jobs: find and sort slices, read HU, preprocess, postprocess.

``series`` scans a series folder under the data root and sorts its slices geometrically (with
``headers`` walking the folder and parsing each file's header), ``pixels`` reads one slice as HU,
``files`` holds the low-level file helpers they share, ``preprocess`` windows and resizes HU slices
into model input, and ``postprocess`` turns per-slice log-probabilities into labels (monotonic in
anatomical order by default). These modules import pydicom and numpy, so they belong to the worker
process only, never the web process.
"""

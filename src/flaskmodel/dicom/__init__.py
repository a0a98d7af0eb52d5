"""DICOM series handling for series jobs: find and sort slices, read HU, preprocess, postprocess.

``series`` scans a series folder under the data root and sorts its slices geometrically,
``preprocess`` windows and resizes HU slices into model input, and ``postprocess`` turns per-slice
log-probabilities into labels (monotonic in anatomical order by default). These modules import
pydicom and numpy, so they belong to the worker process only, never the web process.
"""

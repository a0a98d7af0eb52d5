"""What ``flaskmodel up`` suggests trying once the stack is ready: requests over the demo data and,
with the DICOM front door on, sending a real study by DICOM."""

from __future__ import annotations

import json
from pathlib import Path

from flaskmodel.demo.series import DEMO_SERIES_UID
from flaskmodel.settings import Settings

#: A real CT study to send by DICOM, in a clone of the repository (``make run`` runs there).
SAMPLE_STUDY = Path("tests/data/dicom/tcia-lung-pet-ct-dx-A0002-chest-B40f-j2k")


def sample_requests(settings: Settings) -> str:
    """The requests ``flaskmodel up`` announces once ready (``{base}`` is the stack's URL): a job
    over every slice of the demo CT series, reading it back, and (with the DICOM front door on)
    sending a real JPEG 2000 study with dcmtk's storescu, then asking what became of it."""
    body = json.dumps({"model": "ct_classifier", "series_uid": DEMO_SERIES_UID})
    lines = (
        "curl -s -X POST {base}/v1/jobs -H 'Content-Type: application/json' -d '"
        + body.replace("{", "{{").replace("}", "}}")
        + "'\n      curl -s {base}/v1/jobs/<job_id>   # state, progress, per-slice labels"
    )
    dicom = settings.dicom
    if dicom.enabled and dicom.port:
        study = SAMPLE_STUDY if SAMPLE_STUDY.is_dir() else "<folder of a CT series>"
        lines += (
            f"\n      storescu -xv -aec {dicom.ae_title} 127.0.0.1 {dicom.port} +sd {study}"
            "\n      curl -s {base}/v1/series/<SeriesInstanceUID>   # received, routed, its job"
        )
    return lines

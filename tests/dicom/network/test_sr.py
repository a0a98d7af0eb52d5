"""The DICOM SR of a series job: built from a realistic result for the real chest series and
read back with plain pydicom."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage

from flaskmodel.dicom.network.sr import CODING_SCHEME, build_report, report_bytes, report_uids
from flaskmodel.dicom.series import Series, scan_series
from flaskmodel.errors import InvalidRequest
from tests.dicom.conftest import Samples

CLASS_NAMES = ["chest", "abdomen"]


@dataclass(frozen=True)
class Finding:
    """One measurement group of the report, as read back."""

    sop_instance_uid: str
    frame: int | None
    label: str
    label_code: str
    probability: float
    unit: str


def fake_result(series: Series, model: str = "ct_classifier") -> dict[str, Any]:
    """A series job result (shaped like the worker's ``_result``) with made-up labels: the first
    12 slices ``chest``, the rest ``abdomen``; scores are softmax outputs."""
    rows = []
    for i, ref in enumerate(series.slices):
        label_index = 0 if i < 12 else 1
        p = 0.6 + 0.02 * (i % 10)
        scores = [p, 1 - p] if label_index == 0 else [1 - p, p]
        rows.append(
            {
                "index": i,
                "sop_instance_uid": ref.sop_instance_uid,
                "instance_number": ref.instance_number,
                "z": round(ref.z, 4),
                "position": list(ref.position) if ref.position else None,
                "label": CLASS_NAMES[label_index],
                "label_index": label_index,
                "label_raw": CLASS_NAMES[label_index],
                "scores": [round(s, 6) for s in scores],
            }
        )
    return {
        "series_uid": series.uid,
        "model_name": model,
        "model_version": 3,
        "slices": rows,
        "range": {"start": 0, "stop": len(rows)},
        "direction": "feet-first",
        "postprocess": "monotonic",
        "class_names": CLASS_NAMES,
    }


def _items(parent: Dataset) -> Iterator[Dataset]:
    yield from parent.get("ContentSequence", [])


def _concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


def read_findings(sr: Dataset) -> list[Finding]:
    """The measurement groups of a TID 1500 report, walked with pydicom only."""
    measurements = [
        item for item in _items(sr) if _concept(item) == ("DCM", "126010")
    ]  # "Imaging Measurements"
    assert len(measurements) == 1
    findings = []
    for group in _items(measurements[0]):
        assert _concept(group) == ("DCM", "125007")  # "Measurement Group"
        image = [i for i in _items(group) if i.ValueType == "IMAGE"]
        code = [i for i in _items(group) if _concept(i) == (CODING_SCHEME, "LABEL")]
        num = [i for i in _items(group) if _concept(i) == (CODING_SCHEME, "PROB")]
        assert len(image) == len(code) == len(num) == 1
        ref = image[0].ReferencedSOPSequence[0]
        frames = ref.get("ReferencedFrameNumber")
        value = num[0].MeasuredValueSequence[0]
        findings.append(
            Finding(
                sop_instance_uid=str(ref.ReferencedSOPInstanceUID),
                frame=int(frames) if frames is not None else None,
                label=str(code[0].ConceptCodeSequence[0].CodeMeaning),
                label_code=str(code[0].ConceptCodeSequence[0].CodeValue),
                probability=float(value.NumericValue),
                unit=str(value.MeasurementUnitsCodeSequence[0].CodeValue),
            )
        )
    return findings


def job_texts(sr: Dataset) -> dict[str, str]:
    """The TEXT items of the report's "Qualitative Evaluations" container, by concept code."""
    containers = [item for item in _items(sr) if _concept(item) == ("UMLS", "C0034375")]
    assert len(containers) == 1
    return {_concept(item)[1]: str(item.TextValue) for item in _items(containers[0])}


@pytest.fixture(scope="module")
def chest(samples: Samples) -> tuple[Series, Dataset]:
    series = scan_series(samples.root, samples.j2k)
    return series, pydicom.dcmread(series.slices[5].path, stop_before_pixels=True)


def test_report_references_every_slice_with_label_and_probability(
    chest: tuple[Series, Dataset],
) -> None:
    series, source = chest
    result = fake_result(series)
    sr = pydicom.dcmread(BytesIO(report_bytes(build_report("job-a", result, source))))

    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.Modality == "SR"
    assert sr.SeriesDescription == "FlaskModel ct_classifier results"
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == report_uids("job-a")
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber"):
        assert sr.get(keyword) == source.get(keyword), keyword
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.CompletionFlag == "COMPLETE"

    evidence = sr.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1 and evidence[0].StudyInstanceUID == source.StudyInstanceUID
    (series_ref,) = evidence[0].ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == series.uid
    assert sorted(r.ReferencedSOPInstanceUID for r in series_ref.ReferencedSOPSequence) == sorted(
        s.sop_instance_uid for s in series.slices
    )
    assert {r.ReferencedSOPClassUID for r in series_ref.ReferencedSOPSequence} == {
        source.SOPClassUID
    }

    findings = read_findings(sr)
    rows = result["slices"]
    assert [f.sop_instance_uid for f in findings] == [r["sop_instance_uid"] for r in rows]
    assert [f.label for f in findings] == [r["label"] for r in rows]
    assert [f.label_code for f in findings] == [r["label"] for r in rows]
    assert [f.probability for f in findings] == pytest.approx(
        [r["scores"][r["label_index"]] for r in rows]
    )
    assert {f.unit for f in findings} == {"{probability}"}
    assert {f.frame for f in findings} == {None}

    texts = job_texts(sr)
    assert texts["JOBID"] == "job-a"
    assert (texts["MODEL"], texts["MODELVERSION"]) == ("ct_classifier", "3")
    assert (texts["POSTPROCESS"], texts["DIRECTION"]) == ("monotonic", "feet-first")
    assert texts["SUMMARY"] == "chest: 12, abdomen: 8"


def test_uids_are_fixed_per_job(chest: tuple[Series, Dataset]) -> None:
    series, source = chest
    result = fake_result(series)
    first = build_report("job-b", result, source)
    again = build_report("job-b", result, source)
    other = build_report("job-c", result, source)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (
        again.SeriesInstanceUID,
        again.SOPInstanceUID,
    )
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID


def test_frames_logits_and_awkward_labels(chest: tuple[Series, Dataset]) -> None:
    series, source = chest
    ref = series.slices[0]
    result = {
        "series_uid": series.uid,
        "model_name": "m",
        "model_version": 1,
        "slices": [
            # Logits, not probabilities: reported as their softmax.
            {"sop_instance_uid": ref.sop_instance_uid, "frame_number": 1, "label": "upper body",
             "label_index": 0, "scores": [2.0, 0.0]},
            {"sop_instance_uid": ref.sop_instance_uid, "frame_number": 2,
             "label": "a label far longer than sixteen characters", "label_index": 1,
             "scores": [0.0, 2.0]},
            {"sop_instance_uid": ref.sop_instance_uid, "frame_number": 3, "label": "Bauch/Becken",
             "label_index": 0, "scores": [0.5, 0.5]},
        ],
    }  # fmt: skip
    sr = pydicom.dcmread(BytesIO(report_bytes(build_report("job-d", result, source))))
    findings = read_findings(sr)
    assert [f.frame for f in findings] == [1, 2, 3]
    assert [f.label for f in findings] == [
        "upper body",
        "a label far longer than sixteen characters",
        "Bauch/Becken",
    ]
    assert [f.label_code for f in findings] == ["upper body", "CLASS1", "CLASS0"]
    assert findings[0].probability == pytest.approx(0.880797, abs=1e-6)
    assert findings[1].probability == pytest.approx(0.880797, abs=1e-6)
    assert findings[2].probability == pytest.approx(0.5)
    assert "DIRECTION" not in job_texts(sr)


def test_bad_inputs_are_refused(chest: tuple[Series, Dataset], samples: Samples) -> None:
    series, source = chest
    result = fake_result(series)
    with pytest.raises(InvalidRequest, match="no slice results"):
        build_report("job-e", {**result, "slices": []}, source)
    broken = [dict(result["slices"][0])]
    del broken[0]["scores"]
    with pytest.raises(InvalidRequest, match="lacks"):
        build_report("job-e", {**result, "slices": broken}, source)
    other = pydicom.dcmread(samples.files(samples.b70f)[0], stop_before_pixels=True)
    with pytest.raises(InvalidRequest, match="not of series"):
        build_report("job-e", result, other)

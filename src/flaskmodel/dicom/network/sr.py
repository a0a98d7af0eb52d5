"""Build the DICOM Structured Report of a finished series job (highdicom).

The report is a Comprehensive SR holding a TID 1500 Measurement Report, the template the IHE AI
Results profile uses for AI findings, so PACS viewers and SR tools show it as measurement groups
rather than free text. Its content tree:

- observation context: the device ``FlaskModel`` (model name as its model name);
- procedure reported: SCT 363679005 "Imaging procedure";
- imaging measurements: one TID 1501 group per scored slice (per frame for multi-frame sources),
  each with a tracking identifier ``slice <index>``, the algorithm (model name and version), the
  source image (SOP class + instance UID, and the frame number when the row has one), the label
  as a CODE in our own coding scheme ``99FLASKMODEL`` and its probability as a NUM in UCUM
  ``{probability}``;
- qualitative evaluations: TEXT items with the job id, model, version, post-processor, direction
  and a per-label slice count.

Patient and study attributes are copied from one source instance, so the report lands in the
source's study; it is a new series (Modality SR, SeriesDescription ``FlaskModel <model> results``)
and lists every referenced instance in the Current Requested Procedure Evidence Sequence.
Series and SOP Instance UIDs derive from the job id (``report_uids``): a job re-run after a
redelivery builds the same SOPInstanceUID, so a PACS keeps one copy however often it is sent.

Input is the job's result dict (``model_name``, ``model_version``, ``series_uid``, ``slices`` with
``sop_instance_uid``, ``index``, ``label``, ``label_index``, ``scores`` and optionally
``frame_number`` and ``sop_class_uid``; ``postprocess``, ``direction``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import metadata
from io import BytesIO
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid

from flaskmodel.errors import InvalidRequest

__all__ = [
    "CODING_SCHEME",
    "SERIES_NUMBER",
    "build_report",
    "report_bytes",
    "report_uids",
]

#: Our private coding scheme designator (labels and our concept names).
CODING_SCHEME = "99FLASKMODEL"
#: SeriesNumber of every report series (PACS lists sort by it; high keeps reports last).
SERIES_NUMBER = 9900

_LABEL = CodedConcept("LABEL", CODING_SCHEME, "Slice label")
_PROBABILITY = CodedConcept("PROB", CODING_SCHEME, "Label probability")
_PROBABILITY_UNIT = CodedConcept("{probability}", "UCUM", "probability")
_PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")
_QUALITATIVE = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_TEXT_NAMES = {
    "job_id": CodedConcept("JOBID", CODING_SCHEME, "Job ID"),
    "model": CodedConcept("MODEL", CODING_SCHEME, "Model"),
    "model_version": CodedConcept("MODELVERSION", CODING_SCHEME, "Model version"),
    "postprocess": CodedConcept("POSTPROCESS", CODING_SCHEME, "Post-processor"),
    "direction": CodedConcept("DIRECTION", CODING_SCHEME, "Direction"),
    "summary": CodedConcept("SUMMARY", CODING_SCHEME, "Slices per label"),
}
# A CodeValue (SH): at most 16 characters, no backslash or control characters.
_CODE_VALUE = re.compile(r"\A[A-Za-z0-9 ._+-]{1,16}\Z")
# The attributes highdicom reads from the first evidence item (Type 2: present, maybe empty).
_PATIENT_STUDY = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def report_uids(job_id: str) -> tuple[str, str]:
    """``(SeriesInstanceUID, SOPInstanceUID)`` of the job's report: the same on every run."""
    return (
        generate_uid(entropy_srcs=["flaskmodel-sr-series", job_id]),
        generate_uid(entropy_srcs=["flaskmodel-sr-instance", job_id]),
    )


def build_report(job_id: str, result: Mapping[str, Any], source: Dataset) -> hd.sr.ComprehensiveSR:
    """The job's Comprehensive SR (see module doc); ``source`` is any instance of the series.

    Raises ``InvalidRequest`` when the result has no slices, a slice lacks its UID, label or
    scores, or ``source`` belongs to another series than the result.
    """
    rows: Sequence[Mapping[str, Any]] = result.get("slices") or []
    if not rows:
        raise InvalidRequest(f"job '{job_id}' has no slice results to report")
    series_uid = str(result.get("series_uid", ""))
    if str(source.get("SeriesInstanceUID", "")) != series_uid:
        raise InvalidRequest(
            f"the source instance is not of series '{series_uid}' (the job's result)"
        )
    model = str(result.get("model_name", "model"))
    version = str(result.get("model_version", ""))
    algorithm = hd.sr.AlgorithmIdentification(name=model, version=version or "unknown")
    default_class = str(source.SOPClassUID)

    groups = []
    evidence: dict[str, Dataset] = {}
    for position, row in enumerate(rows):
        sop_uid, label, probability = _row_values(job_id, row)
        sop_class = str(row.get("sop_class_uid") or default_class)
        frame = row.get("frame_number")
        index = row.get("index", position)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=[job_id, sop_uid, str(frame)]),
                    identifier=f"slice {index}" + (f" frame {frame}" if frame else ""),
                ),
                algorithm_id=algorithm,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(_LABEL, _label_code(label, row))
                ],
                measurements=[hd.sr.Measurement(_PROBABILITY, probability, _PROBABILITY_UNIT)],
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup(
                        sop_class, sop_uid, referenced_frame_numbers=[int(frame)] if frame else None
                    )
                ],
            )
        )
        evidence.setdefault(sop_uid, _reference(source, sop_class, sop_uid))

    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["flaskmodel-device", model]),
            name="FlaskModel",
            manufacturer_name="FlaskModel",
            model_name=model,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURE,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_job_texts(job_id, result, model, version, rows))

    patient = _patient_source(source)
    with warnings.catch_warnings():
        # The patient's name is copied as the source has it, however many components it has.
        warnings.filterwarnings("ignore", "The string .* person name", UserWarning)
        return _document(job_id, result, model, report, patient, evidence, source)


def _document(
    job_id: str,
    result: Mapping[str, Any],
    model: str,
    report: hd.sr.MeasurementReport,
    patient: Dataset,
    evidence: dict[str, Dataset],
    source: Dataset,
) -> hd.sr.ComprehensiveSR:
    rows: Sequence[Mapping[str, Any]] = result["slices"]
    sr_series_uid, sr_uid = report_uids(job_id)
    texts = [str(r.get("label", "")) for r in rows] + [model]
    return hd.sr.ComprehensiveSR(
        evidence=[patient, *(d for uid, d in evidence.items() if uid != patient.SOPInstanceUID)],
        content=report,
        series_instance_uid=sr_series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sr_uid,
        instance_number=1,
        manufacturer="FlaskModel",
        manufacturer_model_name=model[:64],
        software_versions=_version(),
        series_description=f"FlaskModel {model} results"[:64],
        is_complete=True,
        is_final=True,
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                CODING_SCHEME, name="FlaskModel labels and measurements"
            )
        ],
        specific_character_set=(
            "ISO_IR 192"
            if any(not t.isascii() for t in texts)
            else source.get("SpecificCharacterSet", "ISO_IR 100")
        ),
    )


def report_bytes(report: Dataset) -> bytes:
    """The report as a DICOM Part 10 file."""
    buffer = BytesIO()
    dcmwrite(buffer, report, enforce_file_format=True)
    return buffer.getvalue()


def _row_values(job_id: str, row: Mapping[str, Any]) -> tuple[str, str, float]:
    """A slice row's SOPInstanceUID, label and the probability of that label."""
    sop_uid = row.get("sop_instance_uid")
    label = row.get("label")
    scores = row.get("scores")
    if not sop_uid or label is None or not scores:
        raise InvalidRequest(
            f"job '{job_id}': a slice result lacks sop_instance_uid, label or scores"
        )
    probabilities = _probabilities([float(v) for v in scores])
    index = row.get("label_index")
    if not isinstance(index, int) or not 0 <= index < len(probabilities):
        index = max(range(len(probabilities)), key=probabilities.__getitem__)
    return str(sop_uid), str(label), round(probabilities[index], 6)


def _probabilities(scores: list[float]) -> list[float]:
    """Scores as probabilities: kept when they already are (non-negative, summing to 1), else
    a softmax of them as logits (the rule the worker's post-processing uses)."""
    if all(s >= 0 for s in scores) and abs(sum(scores) - 1.0) <= 1e-3:
        return scores
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _label_code(label: str, row: Mapping[str, Any]) -> CodedConcept:
    """The label as a code of ours: the label itself when it fits a CodeValue, else its class
    number (``CLASS<index>``); the meaning is always the label."""
    value = label if _CODE_VALUE.match(label) else f"CLASS{row.get('label_index', 'X')}"
    return CodedConcept(value, CODING_SCHEME, label[:64] or value)


def _job_texts(
    job_id: str,
    result: Mapping[str, Any],
    model: str,
    version: str,
    rows: Sequence[Mapping[str, Any]],
) -> hd.sr.ContainerContentItem:
    """TID 1500's "Qualitative Evaluations" container with the job-level TEXT items."""
    counts = Counter(str(r["label"]) for r in rows)
    values = {
        "job_id": job_id,
        "model": model,
        "model_version": version,
        "postprocess": result.get("postprocess"),
        "direction": result.get("direction"),
        "summary": ", ".join(f"{label}: {n}" for label, n in counts.items()),
    }
    container = hd.sr.ContainerContentItem(
        name=_QUALITATIVE, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=_TEXT_NAMES[key],
                value=str(value),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for key, value in values.items()
            if value not in (None, "")
        ]
    )
    return container


def _reference(source: Dataset, sop_class: str, sop_uid: str) -> Dataset:
    """The identity of one referenced instance (what the evidence sequence lists)."""
    ref = Dataset()
    ref.StudyInstanceUID = source.StudyInstanceUID
    ref.SeriesInstanceUID = source.SeriesInstanceUID
    ref.SOPClassUID = sop_class
    ref.SOPInstanceUID = sop_uid
    return ref


def _patient_source(source: Dataset) -> Dataset:
    """A copy of the source's header (no pixels) with its Type 2 patient/study attributes present
    (empty when the source lacks them), for highdicom to copy into the report."""
    copy = Dataset()
    for element in source:
        if element.tag != 0x7FE00010 and element.tag.group != 0x0002:
            copy.add(element)
    for keyword in _PATIENT_STUDY:
        if keyword not in copy:
            setattr(copy, keyword, None)
    return copy


def _version() -> str:
    try:
        return metadata.version("flaskmodel")
    except metadata.PackageNotFoundError:
        return "unknown"

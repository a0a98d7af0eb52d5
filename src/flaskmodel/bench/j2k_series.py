"""The JPEG 2000 series benchmark: a 512-slice real CT series from submit to labels, decode
included, compared with the limit that decoding on every core plus the model set.

``build_j2k_series`` writes the series under ``<data_root>/<J2K_SERIES_UID>/`` from the 20 real
JPEG 2000 chest slices shipped in ``tests/data/dicom`` (each used in turn, with its own
SOPInstanceUID, InstanceNumber and position, one series and study UID; the compressed pixel data
is copied as it is). ``run_j2k_series_bench`` measures the limit in this process
(``measure_j2k_ceiling``, ``flaskmodel.bench.decode_limit``) before the stack starts, then runs
the series through the stack: one study at a time, then two at once.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from flaskmodel.bench.decode_limit import Ceiling, measure_ceiling
from flaskmodel.bench.inprocess import Limit
from flaskmodel.bench.report import Row
from flaskmodel.bench.wrk import Cell
from flaskmodel.client import Client
from flaskmodel.demo.samples import SAMPLE_STUDY

J2K_SERIES_UID = "2.25.90000000000000000000000000000000002"
J2K_STUDY_UID = "2.25.90000000000000000000000000000000003"
J2K_SLICES = 512
#: Spacing of the built series along z (mm): a thin-slice chest CT.
J2K_SPACING_MM = 0.625
MODEL = "ct_classifier"
#: Studies timed one after another, and studies submitted at once.
ALONE_RUNS = 2
TOGETHER = 2

# The repository's copy of the sample (the bench runs in a clone), else one below the cwd.
_REPO_SAMPLES = Path(__file__).resolve().parents[3] / SAMPLE_STUDY


def sample_folder() -> Path:
    """The folder of the shipped JPEG 2000 chest slices."""
    for folder in (_REPO_SAMPLES, SAMPLE_STUDY.resolve()):
        if folder.is_dir():
            return folder
    raise RuntimeError(f"the JPEG 2000 samples are missing: {SAMPLE_STUDY} (run in a clone)")


def build_j2k_series(data_root: Path, slices: int = J2K_SLICES, source: Path | None = None) -> str:
    """Write the series unless its folder holds ``slices`` files; a line saying what was done."""
    import pydicom  # noqa: PLC0415 - the bench's other paths never read DICOM

    folder = data_root / J2K_SERIES_UID
    if folder.is_dir() and len(list(folder.glob("*.dcm"))) == slices:
        return f"JPEG 2000 series {J2K_SERIES_UID}: exists ({slices} slices)"
    files = sorted((source or sample_folder()).glob("*.dcm"))
    samples = [pydicom.dcmread(path) for path in files]
    samples.sort(key=lambda ds: int(ds.InstanceNumber))
    x, y, top = (float(v) for v in samples[0].ImagePositionPatient)
    partial = data_root / f".{J2K_SERIES_UID}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for index in range(slices):
        ds = samples[index % len(samples)]
        sop = pydicom.uid.UID(f"{J2K_SERIES_UID}.{index + 1}")
        z = round(top - index * J2K_SPACING_MM, 4)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SeriesInstanceUID = J2K_SERIES_UID
        ds.StudyInstanceUID = J2K_STUDY_UID
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [x, y, z]
        ds.SliceLocation = z
        ds.save_as(partial / f"{index + 1:04d}.dcm", enforce_file_format=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return f"JPEG 2000 series {J2K_SERIES_UID}: {slices} slices written from {len(files)} samples"


def measure_j2k_ceiling(models_root: Path, data_root: Path, limits: list[Limit]) -> Ceiling:
    """The series' limit on this machine, measured in this process (before the stack runs)."""
    return measure_ceiling(models_root, data_root, J2K_SERIES_UID, MODEL, limits)


def run_j2k_series_bench(
    base: str, ceiling: Ceiling, say: Callable[[str], None]
) -> tuple[list[Row], list[str]]:
    """Rows (limit: ``ceiling``, decode on every core plus the model) and the notes that
    explain them."""
    say(f"JPEG 2000 series: {ceiling.summary()}")
    client = Client(base, timeout=60)
    _run(client, start=0, stop=32)  # warm-up: the worker's decode processes start here
    alone = [_study(client) for _ in range(ALONE_RUNS)]
    started = time.perf_counter()
    with ThreadPoolExecutor(TOGETHER) as pool:
        together = list(pool.map(lambda _: _study(client), range(TOGETHER)))
    together_wall = time.perf_counter() - started
    rows = [
        Row(
            f"JPEG 2000 series, one study at a time ({J2K_SLICES} slices, submit → labels)",
            MODEL, 1, _cell(alone, sum(s for s, _ in alone), 1), ceiling.combined, 0,
        ),
        Row(
            f"JPEG 2000 series, {TOGETHER} studies at once",
            MODEL, 1, _cell(together, together_wall, TOGETHER), ceiling.combined, 0,
        ),
    ]  # fmt: skip
    for row in rows:
        say(f"{row.scenario}: {row.items_per_second:.1f} slices/s of {ceiling.combined:.1f}")
    return rows, [*ceiling.notes(), _study_note(alone, together, together_wall)]


def _run(client: Client, *, start: int | None = None, stop: int | None = None) -> dict[str, Any]:
    job = client.submit_series(J2K_SERIES_UID, model=MODEL, start=start, stop=stop)
    view = client.wait(job["job_id"], timeout=900, poll=0.05)
    if view["state"] != "SUCCEEDED":
        raise RuntimeError(f"JPEG 2000 series job {view['state']}: {view.get('error')}")
    return dict(view["result"])


def _study(client: Client) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = _run(client)
    seconds = time.perf_counter() - started
    if len(result["slices"]) != J2K_SLICES:
        raise RuntimeError(f"JPEG 2000 series job scored {len(result['slices'])} slices")
    return seconds, result


def _cell(studies: list[tuple[float, dict[str, Any]]], wall: float, connections: int) -> Cell:
    latencies = np.array([seconds for seconds, _ in studies]) * 1000
    return Cell(
        connections=connections, requests=len(studies), completed=J2K_SLICES * len(studies),
        seconds=wall, p50_ms=float(np.percentile(latencies, 50)),
        p99_ms=float(np.percentile(latencies, 99)), errors=0,
    )  # fmt: skip


def _study_note(
    alone: list[tuple[float, dict[str, Any]]],
    together: list[tuple[float, dict[str, Any]]],
    together_wall: float,
) -> str:
    seconds = [s for s, _ in alone]
    timings = [r["timings"] for _, r in alone]
    decode = np.mean([t["decode_seconds"] + t["preprocess_seconds"] for t in timings])
    inference = np.mean([t["inference_seconds"] for t in timings])
    chunks = np.mean([t["total_seconds"] for t in timings])
    return (
        f"JPEG 2000 series end to end ({J2K_SLICES} slices, submit → labels): one study "
        f"{np.mean(seconds):.2f} s ({', '.join(f'{s:.2f}' for s in seconds)}), "
        f"{J2K_SLICES / np.mean(seconds):.1f} slices/s; the worker's own timings per study: "
        f"decode+preprocess {decode:.2f} CPU-s (summed over its decode processes), model calls "
        f"{inference:.2f} s, its chunks {chunks:.2f} s in all (the rest of the study's time is "
        f"queueing between chunks and the round trips). {TOGETHER} studies at once: "
        f"{together_wall:.2f} s for both "
        f"({TOGETHER * J2K_SLICES / together_wall:.1f} slices/s, "
        f"{np.mean([s for s, _ in together]):.2f} s per study)."
    )

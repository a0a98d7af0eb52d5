"""The decode processes of series jobs: same answers as in-process, errors, replaced children."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flaskmodel.dicom.headers import SliceRef
from flaskmodel.dicom.preprocess import PreprocessConfig
from flaskmodel.dicom.series import scan_series
from flaskmodel.errors import DicomReadError
from flaskmodel.worker.decode_pool import DecodePool, prepare_slice
from tests.conftest import CHEST, SAMPLES

CONFIG = PreprocessConfig(input_size=(64, 64), window="file")


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    pool = DecodePool(2)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def refs() -> list[SliceRef]:
    return list(scan_series(SAMPLES, CHEST).slices)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_pool_prepares_each_slice_as_the_worker_would_in_process(
    pool: DecodePool, refs: list[SliceRef]
) -> None:
    got = pool.prepare(refs[:7], SAMPLES, CONFIG, thumbnails=True, job_id="job-1")
    want = [prepare_slice(ref, SAMPLES, CONFIG, thumbnails=True) for ref in refs[:7]]
    assert len(got) == 7
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.image, b.image)
        assert a.thumbnail == b.thumbnail
        assert a.decode_seconds > 0
    again = pool.prepare(refs[7:9], SAMPLES, CONFIG, thumbnails=False, job_id=None)
    assert [p.thumbnail for p in again] == [None, None]
    assert len(pool.pids()) == 2


def test_a_slice_that_does_not_decode_fails_the_batch_naming_the_file(
    pool: DecodePool, refs: list[SliceRef], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(SAMPLES / CHEST, data / "chest")
    series = scan_series(data, "chest").slices
    broken = series[3].path
    broken.write_bytes(broken.read_bytes()[:-60000])  # pixel data cut short
    with pytest.raises(DicomReadError, match=broken.name):
        pool.prepare(list(series[:6]), data, CONFIG, thumbnails=True, job_id=None)
    # The children are fine: the next batch goes through.
    assert len(pool.prepare(list(series[4:6]), data, CONFIG, thumbnails=True, job_id=None)) == 2


def test_a_child_killed_between_batches_is_replaced(pool: DecodePool, refs: list[SliceRef]) -> None:
    pool.prepare(refs[:2], SAMPLES, CONFIG, thumbnails=False, job_id=None)
    first = pool.pids()
    os.kill(first[0], signal.SIGKILL)
    while _alive(first[0]):
        time.sleep(0.05)
    assert len(pool.prepare(refs[:5], SAMPLES, CONFIG, thumbnails=False, job_id=None)) == 5
    assert set(pool.pids()).isdisjoint(first)
    assert not any(_alive(pid) for pid in first)


def test_children_exit_with_their_parent(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from flaskmodel.dicom.preprocess import PreprocessConfig\n"
        "from flaskmodel.dicom.series import scan_series\n"
        "from flaskmodel.worker.decode_pool import DecodePool\n"
        f"root = __import__('pathlib').Path({str(SAMPLES)!r})\n"
        f"refs = list(scan_series(root, {CHEST!r}).slices)[:2]\n"
        "pool = DecodePool(2)\n"
        "pool.prepare(refs, root, PreprocessConfig(input_size=(8, 8)), thumbnails=False,"
        " job_id=None)\n"
        "print(*pool.pids(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    children = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(children) == 2 and all(_alive(pid) for pid in children)
    parent.kill()  # no clean-up runs: the children see their stdin close
    parent.wait()
    parent.stdout.close()
    assert parent.stdin is not None
    parent.stdin.close()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def test_the_children_never_import_tensorflow() -> None:
    # A child runs ``from flaskmodel.worker.decode_pool import serve``: nothing more is imported.
    check = "import sys, flaskmodel.worker.decode_pool; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_process_pool_stops_its_children_when_its_process_exits() -> None:
    # The pool every series job of a process shares (``decode_pool``): a process that ran a series
    # job and exits must not leave its decode children behind.
    script = f"""
from pathlib import Path
from flaskmodel.dicom.preprocess import PreprocessConfig
from flaskmodel.dicom.series import scan_series
from flaskmodel.settings.sections import LogSettings
from flaskmodel.worker.decode_pool import decode_pool
pool = decode_pool(LogSettings(level="WARNING"))
refs = list(scan_series(Path({str(SAMPLES)!r}), {CHEST!r}).slices)[:2]
pool.prepare(refs, Path({str(SAMPLES)!r}), PreprocessConfig(input_size=(64, 64), window="file"),
             thumbnails=False, job_id=None)
print(" ".join(str(pid) for pid in pool.pids()))
"""
    out = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", script],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    pids = [int(pid) for pid in out.stdout.split()]
    assert pids, out.stderr
    assert "ResourceWarning" not in out.stderr
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)

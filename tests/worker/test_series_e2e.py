"""Series jobs end to end: HTTP → Celery → DICOM → SavedModel → Redis, on real scanner data."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import requests

from flaskmodel.demo.build import DEMO_SERIES_UID
from flaskmodel.storage.redis import connect
from flaskmodel.storage.workers import WorkerRegistry
from tests.conftest import CHEST, SAMPLES, Stack
from tests.web.test_jobs_e2e import wait_job


def submit(stack: Stack, payload: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(stack.url("/v1/jobs"), json=payload, timeout=10)
    assert response.status_code == 202, response.text
    return wait_job(stack, response.json()["job_id"], timeout=120)


def reference_scores(models_root: Path, files: list[Path]) -> np.ndarray:
    """The classifier applied directly: pydicom HU, soft-tissue window, and the TensorFlow resize
    its flaskmodel.json names (``tf_bilinear``, what it was trained with)."""
    import tensorflow as tf  # noqa: PLC0415

    images = []
    for path in files:
        ds = pydicom.dcmread(path)
        hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        windowed = np.clip((hu - (40 - 200)) / 400, 0, 1)
        images.append(windowed[..., None])
    batch = tf.image.resize(np.stack(images), (64, 64), "bilinear", antialias=False).numpy()
    fn = tf.saved_model.load(str(models_root / "ct_classifier" / "1")).signatures["serving_default"]
    return np.asarray(fn(image=tf.constant(batch))["scores"].numpy())


def test_real_chest_series_is_geometrically_ordered(stack: Stack, models_root: Path) -> None:
    job = submit(
        stack, {"model": "ct_classifier", "series_uid": "chest", "slices": {"start": 2, "stop": 12}}
    )
    assert job["state"] == "SUCCEEDED", job
    result = job["result"]
    rows = result["slices"]
    assert [r["index"] for r in rows] == list(range(2, 12))
    z = [r["z"] for r in rows]
    assert z == sorted(z) and len(set(z)) == 10
    # InstanceNumber runs head→feet (z falling) in this series, so it must run backwards here.
    numbers = [r["instance_number"] for r in rows]
    assert numbers == sorted(numbers, reverse=True)
    assert job["progress"] == {"done": 10, "total": 10}
    assert result["model_name"] == "ct_classifier" and result["model_version"] == 1
    assert result["direction"] in ("head-first", "feet-first")
    assert len(result["class_names"]) == 12
    labels = [r["label_index"] for r in rows]
    assert labels == sorted(labels) or labels == sorted(labels, reverse=True)
    for row in rows:
        assert len(row["scores"]) == 12 and abs(sum(row["scores"]) - 1) < 1e-3
        assert row["label_raw"] == result["class_names"][int(np.argmax(row["scores"]))]
    # Scores agree with the model applied to pydicom's own HU values and TensorFlow's resize (the
    # worker's numpy resize equals it to float32 rounding: 2e-6 apart in scores; TF's area resize,
    # the wrong method, is 0.65 apart).
    by_uid = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
        for p in (SAMPLES / CHEST).iterdir()
    }
    expected = reference_scores(models_root, [by_uid[r["sop_instance_uid"]] for r in rows])
    np.testing.assert_allclose([r["scores"] for r in rows], expected, atol=1e-3)
    assert set(result["timings"]) >= {
        "scan_seconds",
        "decode_seconds",
        "inference_seconds",
        "total_seconds",
    }
    # Who ran it: the worker's Celery node name, host and pool process, once per chunk.
    assert stack.settings.worker.node_name == "flaskmodel@%h"
    host = socket.gethostname()
    pids = {beat.pid for beat in WorkerRegistry(connect(stack.settings), ttl=3).live()}
    assert job["worker"]["node"] == f"flaskmodel@{host}" and job["worker"]["host"] == host
    assert job["worker"]["pid"] in pids
    history = job["attempts_history"]
    assert [(a["attempt"], a["chunk"]) for a in history] == [(1, i) for i in range(len(history))]
    assert [a["outcome"] for a in history] == ["handed_over"] * (len(history) - 1) + ["SUCCEEDED"]
    assert history[-1]["worker"] == job["worker"] and history[-1]["ended_at"] == job["finished_at"]


def test_demo_series_via_original_routes_and_series_results(stack: Stack) -> None:
    started = requests.get(stack.url(f"/inference/{DEMO_SERIES_UID}/0/24"), timeout=10)
    assert started.status_code == 202, started.text
    task_id = started.json()["task_id"]
    wait_job(stack, task_id, timeout=120)
    result = requests.get(stack.url(f"/get_result/{task_id}"), timeout=10)
    assert result.status_code == 200
    body = result.json()
    assert body["series_uid"] == DEMO_SERIES_UID and len(body["slices"]) == 24
    # The phantom runs head (slice 1, highest z) to legs; sorted by z ascending it is feet first.
    labels = [r["label_index"] for r in body["slices"]]
    assert labels == sorted(labels, reverse=True)
    assert labels[0] > labels[-1]
    assert body["direction"] == "feet-first"
    stored = requests.get(stack.url(f"/v1/series/{DEMO_SERIES_UID}/results"), timeout=10)
    assert stored.status_code == 200
    stored_body = stored.json()
    assert [r["label"] for r in stored_body["slices"]] == [r["label"] for r in body["slices"]]
    assert stored_body["model_version"] == 1 and stored_body["job_id"] == task_id
    missing = requests.get(stack.url("/v1/series/1.2.3/results"), timeout=10)
    assert missing.status_code == 404


def test_series_failures_are_clear(stack: Stack) -> None:
    gone = submit(stack, {"model": "ct_classifier", "series_uid": "no-such-series"})
    assert gone["state"] == "FAILED" and gone["error"]["type"] == "series_not_found"
    past = submit(
        stack, {"model": "ct_classifier", "series_uid": "chest", "slices": {"start": 5, "stop": 99}}
    )
    assert past["state"] == "FAILED" and "past the end" in past["error"]["message"]
    assert "20 slices" in past["error"]["message"]
    # An empty range is refused before it is queued, on both routes.
    empty = requests.post(
        stack.url("/v1/jobs"),
        json={"model": "ct_classifier", "series_uid": "chest", "slices": {"start": 5, "stop": 5}},
        timeout=10,
    )
    assert empty.status_code == 400 and "is empty" in empty.json()["error"]
    backwards = requests.get(stack.url("/inference/chest/5/1"), timeout=10)
    assert backwards.status_code == 400 and "is empty" in backwards.json()["error"]
    wrong_model = submit(stack, {"model": "tiny", "series_uid": "chest"})
    assert (
        wrong_model["state"] == "FAILED"
        and "cannot take CT slices" in wrong_model["error"]["message"]
    )


def test_corrupt_slice_fails_the_job_and_names_the_file_a_non_dicom_file_is_skipped(
    stack: Stack,
) -> None:
    folder = stack.settings.data_root / "corrupt"
    shutil.copytree(SAMPLES / CHEST, folder)
    raw = (folder / "1-10.dcm").read_bytes()
    (folder / "1-10.dcm").write_bytes(raw[: len(raw) - 60000])  # truncated JPEG 2000 stream
    broken = submit(stack, {"model": "ct_classifier", "series_uid": "corrupt"})
    assert broken["state"] == "FAILED", broken
    assert broken["error"]["type"] == "dicom_read_error"
    assert "1-10.dcm" in broken["error"]["message"]
    (folder / "notes.txt").write_text("not a DICOM file")
    (folder / "1-10.dcm").write_bytes(raw)
    # A file that is not DICOM at all (a CD export's notes) is skipped and named, not fatal.
    junk = submit(stack, {"model": "ct_classifier", "series_uid": "corrupt"})
    assert junk["state"] == "SUCCEEDED", junk
    warnings = junk["result"]["series"]["warnings"]
    assert "skipped 1 non-DICOM file(s), e.g. corrupt/notes.txt" in warnings
    # The worker survived and still serves.
    ok = submit(stack, {"model": "ct_classifier", "series_uid": "chest", "slices": {"stop": 2}})
    assert ok["state"] == "SUCCEEDED"


def test_traversal_attempts_are_rejected(stack: Stack) -> None:
    for uid in ("..", "../etc", "/etc", ".hidden", "a/b", "%2e%2e"):
        response = requests.post(
            stack.url("/v1/jobs"), json={"model": "ct_classifier", "series_uid": uid}, timeout=10
        )
        assert response.status_code == 400, (uid, response.text)
    for path in (
        "/inference/%2e%2e/0/1",
        "/inference/..%2F..%2Fetc/0/1",
        "/v1/series/%2e%2e/results",
    ):
        response = requests.get(stack.url(path), timeout=10)
        assert response.status_code in (400, 404), (path, response.text)
        assert response.json()["error"]

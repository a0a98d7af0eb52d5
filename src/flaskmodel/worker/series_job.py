"""Series jobs: DICOM slices in, per-slice labels out, in chunks of batches that survive
redelivery and interleave with other jobs.

One call runs one chunk: up to ``series.chunk_batches`` batches of the slices not yet scored.
Each finished batch's scores are stored per slice (``SeriesProgress``, keyed by ``SliceRef.key``:
the SOPInstanceUID, plus ``:<frame>`` for a frame of a multi-frame file) before progress moves,
so a redelivered chunk (its worker died) and every later chunk skip the
slices already scored and never count one twice. Cancellation is checked before every batch. The
chunk that scores the last slice post-processes the whole series once; the finished result is
also merged into ``flaskmodel:series:<uid>:<model>`` (fields ``slice:<key>``) for other systems."""

from __future__ import annotations

import base64
import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import redis

from flaskmodel.dicom.headers import SliceRef
from flaskmodel.dicom.postprocess import PostprocessResult, postprocess
from flaskmodel.dicom.preprocess import PreprocessConfig, resolve_window
from flaskmodel.dicom.series import Series, scan_series
from flaskmodel.errors import InvalidRequest, JobCancelled
from flaskmodel.jobs.series_results import SeriesResults
from flaskmodel.jobs.slices import SeriesProgress
from flaskmodel.jobs.store import JobStore
from flaskmodel.logs import JOB_ID
from flaskmodel.metrics.catalogue import SLICE_DECODE, SLICE_PREPROCESS
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.runtime.base import ModelRuntime
from flaskmodel.runtime.repository import ModelConfig, ModelRepository
from flaskmodel.schemas import JobRequest, JobState, ModelSpec
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import key
from flaskmodel.worker.decode_pool import Prepared, decode_pool
from flaskmodel.worker.series_source import fetch_series

logger = logging.getLogger(__name__)


def run_series(
    job_id: str,
    request: JobRequest,
    settings: Settings,
    jobs: JobStore,
    repository: ModelRepository,
    client: redis.Redis,
) -> dict[str, Any] | None:
    """Run one chunk (``series.chunk_batches`` batches) of the job: its result once every slice
    is scored, else None (the caller hands the job over to its next chunk)."""
    assert request.series_uid is not None
    timings: dict[str, float] = {"scan": 0.0, "decode": 0.0, "preprocess": 0.0, "inference": 0.0}
    started = time.perf_counter()
    series, slices = _scanned(job_id, request, settings)
    timings["scan"] = time.perf_counter() - started
    # A redelivered job, and every later chunk, keeps the version its first chunk pinned.
    pinned = jobs.get(job_id).version or request.version
    runtime = repository.get(request.model, pinned)
    config = repository.config(request.model)
    jobs.set_version(job_id, runtime.spec.version)
    image_input, score_output = _image_signature(runtime.spec)
    preprocess = config.preprocess.model_copy(update={"input_size": _input_size(runtime.spec)})
    batch_size = config.batch_size or settings.series.batch_size

    progress = SeriesProgress(client, ttl=settings.jobs.ttl_seconds)
    done = progress.scored(job_id)
    jobs.set_progress(job_id, sum(s.key in done for s in slices), len(slices))
    todo = [s for s in slices if s.key not in done]
    if done and todo:
        logger.info("job %s goes on with %d of %d slices scored", job_id, len(done), len(slices))
    offset = series.slices.index(slices[0])
    index_of = {s.key: offset + i for i, s in enumerate(slices)}
    chunk = todo[: batch_size * settings.series.chunk_batches]
    for first in range(0, len(chunk), batch_size):
        if jobs.state(job_id) is not JobState.RUNNING:
            raise JobCancelled(f"job '{job_id}' was cancelled; stopped before a batch")
        batch = chunk[first : first + batch_size]
        tick = time.perf_counter()
        prepared = _prepare_batch(batch, settings, preprocess, request.model)
        images = [p.image for p in prepared]
        # Summed across the decode processes: CPU time spent, not wall time.
        timings["decode"] += sum(p.decode_seconds for p in prepared)
        timings["preprocess"] += sum(p.preprocess_seconds for p in prepared)
        inputs = {image_input: np.stack(images)}
        tick2 = time.perf_counter()
        outputs = runtime.predict(inputs, linger=False)  # a whole batch: no batch delay
        timings["inference"] += time.perf_counter() - tick2
        scores = np.asarray(outputs[score_output], dtype=np.float64).reshape(len(batch), -1)
        _store_batch(client, settings, progress, job_id, batch, scores, prepared, index_of)
        done.update(ref.key for ref in batch)
        jobs.set_progress(job_id, sum(s.key in done for s in slices), len(slices))
        logger.debug("job %s: batch of %d in %.3fs", job_id, len(batch), time.perf_counter() - tick)
    if len(chunk) < len(todo):
        timings["total"] = time.perf_counter() - started
        progress.add_timings(job_id, timings)
        return None
    result = _finish(job_id, request, settings, client, series, slices, runtime, config, timings)
    timings["total"] = time.perf_counter() - started
    totals = progress.add_timings(job_id, timings)
    result["timings"] = {f"{k}_seconds": round(v, 6) for k, v in totals.items()}
    return result


def _finish(
    job_id: str,
    request: JobRequest,
    settings: Settings,
    client: redis.Redis,
    series: Series,
    slices: tuple[SliceRef, ...],
    runtime: ModelRuntime,
    config: ModelConfig,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Every slice is scored: post-process the whole series once and store its labels."""
    progress = SeriesProgress(client, ttl=settings.jobs.ttl_seconds)
    preprocess = config.preprocess.model_copy(update={"input_size": _input_size(runtime.spec)})
    stored = {k: np.asarray(row, dtype=np.float64) for k, row in progress.scores(job_id).items()}

    tick = time.perf_counter()
    name = request.postprocess or config.postprocess
    matrix = np.stack([stored[s.key] for s in slices])
    post = postprocess(name, _log_probs(matrix))
    timings["postprocess"] = time.perf_counter() - tick
    result = _result(
        request, series, slices, runtime, config.class_names, matrix, post, preprocess, name
    )
    tick = time.perf_counter()
    SeriesResults(client, ttl=settings.series.results_ttl_seconds).merge(
        request.model, job_id, result
    )
    progress.clear(job_id)
    _SCANS.pop(job_id, None)
    timings["store"] = time.perf_counter() - tick
    return result


# Scans of the series this process's recent chunks read, by job id: a 2,000-slice series costs
# seconds to scan, and a job's chunks mostly land on the same few processes.
_SCANS: OrderedDict[str, tuple[Series, tuple[SliceRef, ...]]] = OrderedDict()
SCAN_CACHE = 8


def _scanned(
    job_id: str, request: JobRequest, settings: Settings
) -> tuple[Series, tuple[SliceRef, ...]]:
    """The job's series and selected slices, scanned once per process."""
    assert request.series_uid is not None
    if job_id in _SCANS:
        _SCANS.move_to_end(job_id)
        return _SCANS[job_id]
    series = scan_series(fetch_series(request, settings), request.series_uid)
    slices = series.select(
        request.slices.start if request.slices else None,
        request.slices.stop if request.slices else None,
    )
    _SCANS[job_id] = (series, slices)
    while len(_SCANS) > SCAN_CACHE:
        _SCANS.popitem(last=False)
    return series, slices


def _store_batch(
    client: redis.Redis,
    settings: Settings,
    progress: SeriesProgress,
    job_id: str,
    batch: list[SliceRef],
    scores: np.ndarray,
    prepared: list[Prepared],
    index_of: dict[str, int],
) -> None:
    """One batch's scores (the resume point) and thumbnails, in one transaction."""
    pipe = client.pipeline(transaction=True)
    progress.save_in(
        pipe, job_id, {ref.key: row.tolist() for ref, row in zip(batch, scores, strict=True)}
    )
    thumbnails = {
        index_of[ref.key]: base64.b64encode(p.thumbnail).decode()
        for ref, p in zip(batch, prepared, strict=True)
        if p.thumbnail is not None
    }
    if thumbnails:
        pipe.hset(key("thumbs", job_id), mapping=thumbnails)  # type: ignore[arg-type]
        pipe.expire(key("thumbs", job_id), settings.jobs.ttl_seconds)
    pipe.execute()


def _prepare_batch(
    batch: list[SliceRef], settings: Settings, config: PreprocessConfig, model: str
) -> list[Prepared]:
    """The batch's slices read and preprocessed in this process's decode processes (which log
    about this job too), their per-slice times recorded in the process's metrics."""
    prepared = decode_pool(settings.log).prepare(
        batch, settings.data_root, config, thumbnails=settings.series.thumbnails,
        job_id=JOB_ID.get(),
    )  # fmt: skip
    RECORDER.observe_many(SLICE_DECODE, (model,), [p.decode_seconds for p in prepared])
    RECORDER.observe_many(SLICE_PREPROCESS, (model,), [p.preprocess_seconds for p in prepared])
    return prepared


def _image_signature(spec: ModelSpec) -> tuple[str, str]:
    """The image input ``[None, H, W, 1]`` and the score output ``[None, classes]``."""
    images = [t for t in spec.inputs if len(t.shape) == 4 and t.shape[3] in (1, None)]
    if len(spec.inputs) != 1 or not images or None in images[0].shape[1:3]:
        raise InvalidRequest(
            f"model '{spec.name}' cannot take CT slices: series jobs need one input of shape "
            "[-1, H, W, 1] with H and W fixed"
        )
    outputs = [t for t in spec.outputs if len(t.shape) == 2]
    if not outputs:
        raise InvalidRequest(f"model '{spec.name}' has no [-1, classes] output for series jobs")
    preferred = [t for t in outputs if t.name in ("scores", "probabilities", "probs")]
    return images[0].name, (preferred or outputs)[0].name


def _input_size(spec: ModelSpec) -> tuple[int, int]:
    shape = spec.inputs[0].shape
    assert shape[1] is not None and shape[2] is not None
    return shape[1], shape[2]


def _log_probs(scores: np.ndarray) -> np.ndarray:
    """Log-probabilities from softmax scores, or a log-softmax of logits."""
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return np.asarray(np.log(np.clip(scores, 1e-12, None)))
    shifted = scores - scores.max(axis=1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))


def _result(
    request: JobRequest,
    series: Series,
    slices: tuple[SliceRef, ...],
    runtime: ModelRuntime,
    class_names: list[str] | None,
    scores: np.ndarray,
    post: PostprocessResult,
    preprocess: PreprocessConfig,
    postprocessor: str,
) -> dict[str, Any]:
    def name(index: int) -> str:
        return class_names[index] if class_names and index < len(class_names) else str(index)

    offset = series.slices.index(slices[0])
    raw = scores.argmax(axis=1)
    rows = [
        {
            "index": offset + i,
            "sop_instance_uid": ref.sop_instance_uid,
            "frame_number": ref.frame_number,  # None for a single-frame file
            "instance_number": ref.instance_number,
            "z": round(ref.z, 4),
            "position": list(ref.position) if ref.position else None,
            "label": name(post.labels[i]),
            "label_index": int(post.labels[i]),
            "label_raw": name(int(raw[i])),
            "scores": [round(float(v), 6) for v in scores[i]],
        }
        for i, ref in enumerate(slices)
    ]
    window = preprocess.window
    return {
        "series_uid": series.uid,
        "model_name": runtime.spec.name,
        "model_version": runtime.spec.version,
        "slices": rows,
        "range": {"start": offset, "stop": offset + len(slices)},
        "direction": post.direction,
        "postprocess": postprocessor,
        "class_names": class_names,
        "series": {
            "slices": len(series.slices),
            "sort": series.sort_method,
            "spacing_mm": series.spacing,
            "warnings": list(series.warnings),
        },
        "preprocess": {
            "input_size": list(preprocess.input_size),
            "window": window if isinstance(window, str) else window.model_dump(),
            "resolved_window": (
                resolve_window(preprocess, None).model_dump() if window != "file" else "file"
            ),
            "normalise": preprocess.normalise,
            "resize": preprocess.resize,
        },
    }

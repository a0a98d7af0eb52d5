"""The most slices/s a series job can reach on this machine, measured in the bench process.

A series job spends CPU on two things per slice: ``prepare_slice`` (the worker's own per-slice
work: decode the DICOM pixel data to HU, preprocess it for the model, render its thumbnail) and
its share of a batched model call. ``measure_ceiling`` times ``prepare_slice`` with one thread,
two threads and ``DecodePool`` (one process per core, batches of the job's size, exactly as the
worker calls it), and takes the model's in-process rate at the job's batch size from the limits.
Decoding and the model compete for the same cores, so the CPU-seconds a slice costs add up:
``1 / (1/decode_rate + 1/model_rate)`` slices/s (``Ceiling.combined``), with decode_rate the rate
on every core (the processes) and model_rate the model's own (it uses every core as well).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from flaskmodel.bench.inprocess import Limit
from flaskmodel.dicom.headers import SliceRef
from flaskmodel.dicom.series import scan_series
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.settings.sections import SeriesSettings
from flaskmodel.worker.decode_pool import DecodePool, Prepared, prepare_slice

#: Slices timed with threads, and with processes (after one warm-up batch).
THREAD_SLICES = 64
PROCESS_SLICES = 192


@dataclass(frozen=True)
class Ceiling:
    """Slices/s: decode+preprocess per thread count and in processes, the model, combined."""

    one_thread: float
    two_threads: float
    processes: float
    process_count: int
    model: float
    batch: int

    @property
    def combined(self) -> float:
        """Decode on every core plus the model, their CPU-seconds per slice added."""
        return 1 / (1 / self.processes + 1 / self.model)

    def summary(self) -> str:
        return (
            f"decode+preprocess {self.one_thread:.1f} slices/s (1 thread), "
            f"{self.two_threads:.1f} (2 threads), {self.processes:.1f} "
            f"({self.process_count} processes); model {self.model:.1f} at batch {self.batch}; "
            f"limit {self.combined:.1f} slices/s"
        )

    def notes(self) -> list[str]:
        return [
            "JPEG 2000 series limit (the share column of its rows): the worker's per-slice work "
            "(`prepare_slice`: decode, preprocess, thumbnail) measured in the bench process at "
            f"{self.one_thread:.1f} slices/s with 1 thread, {self.two_threads:.1f} with 2 threads "
            f"and {self.processes:.1f} with {self.process_count} processes; the model "
            f"{self.model:.1f} slices/s at batch {self.batch} (in-process limit). Both compete "
            "for the same cores, so their CPU-seconds per slice add: limit = 1 / (1/"
            f"{self.processes:.1f} + 1/{self.model:.1f}) = {self.combined:.1f} slices/s.",
        ]


def measure_ceiling(
    models_root: Path, data_root: Path, series_uid: str, model: str, limits: list[Limit]
) -> Ceiling:
    """Time the worker's per-slice work on the series and combine it with the model's limit."""
    config = ModelRepository(models_root).config(model)
    defaults = SeriesSettings()
    batch = config.batch_size or defaults.batch_size
    refs = list(scan_series(data_root, series_uid).slices)
    one = partial(
        prepare_slice, data_root=data_root, config=config.preprocess,
        thumbnails=defaults.thumbnails,
    )  # fmt: skip
    one(refs[0])  # the resize weights are built once per process
    threads = [_rate(partial(_threads, one, count), refs[:THREAD_SLICES]) for count in (1, 2)]
    pool = DecodePool()
    try:

        def in_processes(batch_refs: list[SliceRef]) -> list[Prepared]:
            prepared: list[Prepared] = []
            for first in range(0, len(batch_refs), batch):
                prepared += pool.prepare(
                    batch_refs[first : first + batch], data_root, config.preprocess,
                    thumbnails=defaults.thumbnails, job_id=None,
                )  # fmt: skip
            return prepared

        in_processes(refs[:batch])  # starts the processes
        processes = _rate(in_processes, refs[batch : batch + PROCESS_SLICES])
    finally:
        pool.close()
    model_rate = _model_rate(limits, model, batch)
    return Ceiling(threads[0], threads[1], processes, pool.processes, model_rate, batch)


def _threads(one: Callable[[SliceRef], Prepared], count: int, refs: list[SliceRef]) -> None:
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(one, refs))


def _rate(work: Callable[[list[SliceRef]], object], refs: list[SliceRef]) -> float:
    started = time.perf_counter()
    work(refs)
    return len(refs) / (time.perf_counter() - started)


def _model_rate(limits: list[Limit], model: str, batch: int) -> float:
    """The model's in-process items/s at ``batch`` (else at the nearest batch measured)."""
    measured = [x for x in limits if x.model == model]
    if not measured:
        raise RuntimeError(f"no in-process limit measured for '{model}'")
    return min(measured, key=lambda x: abs(x.batch - batch)).items_per_second

"""A series job's slices decoded and preprocessed in child processes: one pool per worker
process, started by its first series job and reused by every later one.

JPEG 2000 decoding holds the GIL (pylibjpeg-openjpeg decodes from a Python file object, and
Pillow's OpenJPEG decoder does not let go of it either): two threads decode no faster than one
(about 33 slices/s of the 512×512 chest sample with one thread or two on a 2-core machine, about
70 with two processes). So ``prepare_slice`` — the work per slice: decode it as HU, preprocess it
for the model, render its thumbnail — runs in ``DECODE_PROCESSES`` children, one per core.

The children are plain subprocesses (``python -c``, importing this module and the DICOM code,
never TensorFlow), not ``multiprocessing`` ones: a Celery prefork pool process is daemonic to
``multiprocessing``, which refuses it children, and spawned ``multiprocessing`` children would
re-import the parent's main module. Each takes one pickled task at a time on its stdin and answers
on its stdout (a length-prefixed pickle each way), logs to the worker's stderr, and exits when its
stdin closes, so a worker killed outright leaves none behind. A batch is shared out slice by slice
to whichever child is free, from one thread per child. A child that dies (killed, or a decoder
crash) fails the batch: the children are replaced and the batch tried once more; a second death
fails it with ``DicomReadError`` instead of taking the worker down.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from flaskmodel.dicom.headers import SliceRef
from flaskmodel.dicom.pixels import file_window, load_hu
from flaskmodel.dicom.preprocess import PreprocessConfig, preprocess_slice, resolve_window
from flaskmodel.dicom.thumbnail import render_thumbnail
from flaskmodel.errors import DicomReadError
from flaskmodel.logs import configure, job_context
from flaskmodel.settings import Settings
from flaskmodel.settings.sections import LogSettings


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Decode processes per worker process: one per core this process may run on.
DECODE_PROCESSES = _cores()
_CHILD_MAIN = "from flaskmodel.worker.decode_pool import serve; serve()"
_FRAME = struct.Struct(">Q")
# Each child is one core's worth of work: numpy's BLAS (the resize) stays on one thread in it.
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Prepared:
    """One slice ready for the model, its thumbnail (PNG) and what it cost."""

    image: np.ndarray
    thumbnail: bytes | None
    decode_seconds: float
    preprocess_seconds: float


def prepare_slice(
    ref: SliceRef, data_root: Path, config: PreprocessConfig, *, thumbnails: bool
) -> Prepared:
    """One slice as model input (and, with ``thumbnails``, its PNG for the results viewer)."""
    tick = time.perf_counter()
    hu = load_hu(ref, data_root)
    window = file_window(ref, data_root) if config.window == "file" else None
    tock = time.perf_counter()
    image = preprocess_slice(hu, config, window)
    thumbnail = render_thumbnail(hu, resolve_window(config, window)) if thumbnails else None
    return Prepared(image, thumbnail, tock - tick, time.perf_counter() - tock)


@dataclass(frozen=True)
class _Task:
    ref: SliceRef
    data_root: Path
    config: PreprocessConfig
    thumbnails: bool
    job_id: str | None


class _ChildDied(Exception):
    pass


def _write(stream: IO[bytes], value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def serve() -> None:
    """A child's loop: the log settings, then tasks until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the stack is the worker's to handle
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the answers
    log: LogSettings = _read(requests)
    configure(Settings.model_construct(log=log))
    while True:
        try:
            task: _Task = _read(requests)
        except EOFError:
            return
        try:
            with job_context(task.job_id):
                prepared = prepare_slice(
                    task.ref, task.data_root, task.config, thumbnails=task.thumbnails
                )
            _write(answers, (True, prepared))
        except Exception as exc:  # noqa: BLE001 - the error goes back to the job
            try:
                _write(answers, (False, exc))
            except (pickle.PicklingError, TypeError, AttributeError):
                _write(answers, (False, DicomReadError(f"{type(exc).__name__}: {exc}")))


class _Child:
    def __init__(self, log: LogSettings) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_MAIN],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **_ONE_THREAD},
        )  # fmt: skip
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests, self.answers = self.process.stdin, self.process.stdout
        _write(self.requests, log)

    def call(self, task: _Task) -> Prepared:
        try:
            _write(self.requests, task)
            ok, value = _read(self.answers)
        except (EOFError, OSError) as exc:
            raise _ChildDied from exc
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        for stream in (self.requests, self.answers):
            with contextlib.suppress(OSError):  # the pipe to a dead child cannot flush
                stream.close()


class DecodePool:
    """``prepare_slice`` over a batch of slices in ``processes`` children."""

    def __init__(self, processes: int = DECODE_PROCESSES, log: LogSettings | None = None) -> None:
        self.processes = processes
        self.owner = os.getpid()
        self._log = log or LogSettings(level="WARNING")
        self._children: list[_Child] = []
        self._lock = threading.Lock()  # one batch at a time: a child answers one task at a time

    def prepare(
        self,
        batch: list[SliceRef],
        data_root: Path,
        config: PreprocessConfig,
        *,
        thumbnails: bool,
        job_id: str | None,
    ) -> list[Prepared]:
        """The batch's slices prepared, in order; raises what ``prepare_slice`` raised (for the
        first slice in the batch that failed)."""
        tasks = [_Task(ref, data_root, config, thumbnails, job_id) for ref in batch]
        with self._lock:
            try:
                return self._run(tasks)
            except _ChildDied:
                self._stop()  # killed while idle, or on this batch: once more in new ones
            try:
                return self._run(tasks)
            except _ChildDied:
                self._stop()
                names = f"'{batch[0].path.name}' … '{batch[-1].path.name}'"
                raise DicomReadError(
                    f"a decode process died twice reading the slices {names}"
                ) from None

    def pids(self) -> list[int]:
        """The children's process ids (none before the first batch)."""
        return [child.process.pid for child in self._children]

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _run(self, tasks: list[_Task]) -> list[Prepared]:
        if not self._children:
            self._children = [_Child(self._log) for _ in range(self.processes)]
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(tasks)):
            todo.put(index)
        done: dict[int, Prepared] = {}
        failed: dict[int, BaseException] = {}
        stop = threading.Event()

        def drain(child: _Child) -> None:
            while not stop.is_set():
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done[index] = child.call(tasks[index])
                except Exception as exc:  # noqa: BLE001 - raised by prepare() below
                    failed[index] = exc
                    stop.set()

        with ThreadPoolExecutor(len(self._children), thread_name_prefix="decode") as threads:
            try:
                list(threads.map(drain, self._children))
            finally:
                stop.set()  # a time limit raised here: the threads stop after their slice
        died = [exc for exc in failed.values() if isinstance(exc, _ChildDied)]
        if died:
            raise died[0]
        if failed:
            raise failed[min(failed)]
        return [done[index] for index in range(len(tasks))]

    def _stop(self) -> None:
        children, self._children = self._children, []
        for child in children:
            child.stop()


_POOL: DecodePool | None = None
_POOL_LOCK = threading.Lock()


def decode_pool(log: LogSettings) -> DecodePool:
    """This process's pool (its children start with its first batch)."""
    global _POOL  # noqa: PLW0603 - one pool per process, reused by every series job
    with _POOL_LOCK:
        if _POOL is None or _POOL.owner != os.getpid():
            _POOL = DecodePool(log=log)
            atexit.register(_close_own, _POOL)
        return _POOL


def _close_own(pool: DecodePool) -> None:
    """At exit, stop the children of ``pool`` if this process made it (a forked process inherits
    its parent's exit handlers, not its children)."""
    if pool.owner == os.getpid():
        pool.close()

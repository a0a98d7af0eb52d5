"""The model repository: ``<models_root>/<model>/<version>/`` plus an optional ``flaskmodel.json``.

The highest *loaded* version serves unless a request names one. ``flaskmodel.json`` beside the
versions holds what a signature cannot say (class names, DICOM preprocessing, post-processor,
series batch size, dynamic batching knobs, version labels). Runtimes are loaded once per process,
warmed up, wrapped in their ``DynamicBatcher`` and cached.

Versions have TF Serving's states: ``LOADING`` while a background thread loads and warms one
(never under the repository lock, never in a request thread), ``AVAILABLE`` once it serves, and
``END`` after its folder disappeared and it was unloaded (or its load failed). ``refresh`` (the
worker's heartbeat thread calls it) rescans: a new highest version starts loading in the
background and becomes this process's default only when warm; a removed one is unloaded. A
request for a version that is not loaded yet waits on that version's load alone (``future``).

Models named in ``runtime.remote_models`` are served by TensorFlow
Serving instead (gRPC or REST, one client per server and process), with the versions it reports
AVAILABLE; the others by the local backend, so one worker can mix both.

Thread-safe: Celery's task thread and the synchronous consumer thread look models up together.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flaskmodel.dicom.preprocess import PreprocessConfig
from flaskmodel.errors import FlaskModelError, InvalidRequest, ModelNotFound
from flaskmodel.runtime.base import ModelRuntime, RemoteClient, warm_up
from flaskmodel.runtime.batcher import DynamicBatcher
from flaskmodel.runtime.fake import FakeRuntime
from flaskmodel.runtime.savedmodel import SavedModelRuntime
from flaskmodel.runtime.tfserving_rest import TfServingRestClient
from flaskmodel.schemas import MODEL_NAME_PATTERN, ModelAdvert
from flaskmodel.settings import BatchingSettings, Settings

logger = logging.getLogger(__name__)

CONFIG_FILE = "flaskmodel.json"
LOADING, AVAILABLE, END = "LOADING", "AVAILABLE", "END"
Key = tuple[str, int]


class ModelConfig(BaseModel):
    """``<models_root>/<model>/flaskmodel.json``."""

    model_config = ConfigDict(extra="forbid")

    class_names: list[str] | None = None
    preprocess: PreprocessConfig = PreprocessConfig()
    """How series jobs turn a slice into this model's input (``PreprocessConfig``): ``window``,
    ``normalise``, ``input_size`` (series jobs take it from the signature) and ``resize``, the
    TensorFlow resize the model was trained with (``tf_bilinear``, the default, ``tf_area`` or
    ``antialias``), reproduced in numpy. An unknown value makes the file bad."""
    postprocess: str = "monotonic"
    batch_size: int | None = None
    max_batch_size: int | None = Field(default=None, ge=0)
    max_batch_delay_ms: float | None = Field(default=None, ge=0)
    tune_batch_size: bool | None = None
    batch_threads: int | None = Field(default=None, ge=1)
    version_labels: dict[str, int] = Field(default_factory=dict)


class ModelRepository:
    """Finds, loads, warms, batches and caches model versions for one worker process."""

    def __init__(
        self,
        root: Path,
        *,
        backend: str = "savedmodel",
        warmup: bool = True,
        rescan_seconds: float = 5.0,
        batching: BatchingSettings | None = None,
        remotes: dict[str, RemoteClient] | None = None,
        only: list[str] | None = None,
    ) -> None:
        self.root = root
        # A worker serves the models it resolved at start-up (its queues) alone; None: all.
        self._only = frozenset(only) if only is not None else None
        self._backend = backend
        self._warmup = warmup
        self._rescan = rescan_seconds
        # No settings: batching off, each call goes straight to the model.
        self._batching = batching or BatchingSettings(max_batch_size=0)
        # Model name → the client of the TF Serving that serves it (shared per server).
        self._remotes = dict(remotes or {})
        self._lock = threading.RLock()
        self._loaded: dict[Key, DynamicBatcher] = {}
        self._loading: dict[Key, Future[DynamicBatcher]] = {}
        self._states: dict[Key, str] = {}
        self._failed: dict[Key, str] = {}
        self._versions: dict[str, tuple[float, list[int]]] = {}
        self._configs: dict[str, ModelConfig] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, only: list[str] | None = None) -> ModelRepository:
        runtime = settings.runtime
        clients: dict[tuple[str, str, float], RemoteClient] = {}
        remotes: dict[str, RemoteClient] = {}
        for name, remote in runtime.remote_models.items():
            timeout = remote.timeout_seconds or runtime.tfserving_timeout_seconds
            where = (remote.backend, remote.target, timeout)
            if where not in clients:
                clients[where] = _client(remote.backend, remote.target, timeout)
            remotes[name] = clients[where]
        return cls(
            settings.models_root,
            backend=runtime.backend,
            warmup=runtime.warmup,
            batching=settings.batching,
            remotes=remotes,
            only=only if only is not None else (settings.worker.models or None),
        )

    def names(self) -> list[str]:
        """The models this process serves: all found and remote ones, or those of ``only``."""
        found = set(self._remotes)
        if self.root.is_dir():
            pattern = re.compile(MODEL_NAME_PATTERN)
            found.update(
                p.name
                for p in self.root.iterdir()
                if p.is_dir() and pattern.match(p.name) and self._scan(p.name)
            )
        return [name for name in sorted(found) if self._only is None or name in self._only]

    def versions(self, name: str) -> list[int]:
        with self._lock:
            cached = self._versions.get(name)
            if cached is None or time.monotonic() - cached[0] > self._rescan:
                self._versions[name] = (time.monotonic(), self._scan(name))
            return self._versions[name][1]

    def _scan(self, name: str) -> list[int]:
        remote = self._remotes.get(name)
        if remote is not None:
            return remote.versions(name)
        folder = self.root / name
        if not folder.is_dir():
            return []
        marker = "fake.json" if self._backend == "fake" else "saved_model.pb"
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isascii() and p.name.isdigit() and (p / marker).is_file()
        )

    def resolve(self, name: str, version: int | None = None) -> int:
        """``version``, checked; None: the highest loaded version (the highest found if none is)."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' not found under {self.root}")
        if version is None:
            with self._lock:
                loaded = [v for n, v in self._loaded if n == name and v in versions]
            return max(loaded) if loaded else versions[-1]
        if version not in versions:
            raise ModelNotFound(f"model '{name}' has no version {version} (has {versions})")
        return version

    def config(self, name: str) -> ModelConfig:
        with self._lock:
            if name not in self._configs:
                path = self.root / name / CONFIG_FILE
                try:
                    raw = json.loads(path.read_text()) if path.is_file() else {}
                    self._configs[name] = ModelConfig.model_validate(raw)
                except (ValueError, ValidationError) as exc:
                    raise InvalidRequest(f"model '{name}': bad {CONFIG_FILE}: {exc}") from exc
            return self._configs[name]

    def get(self, name: str, version: int | None = None) -> DynamicBatcher:
        """The loaded, warmed, batched runtime for ``name`` at ``version`` (default when None);
        waits for that version's load if it is not loaded yet."""
        return self.future(name, version).result()

    def future(self, name: str, version: int | None = None) -> Future[DynamicBatcher]:
        """Resolves to the batched runtime; a version not loaded yet loads in the background."""
        key = (name, self.resolve(name, version))
        found = self._loaded.get(key)
        if found is not None:
            done: Future[DynamicBatcher] = Future()
            done.set_result(found)
            return done
        return self._start_load(key)

    def _start_load(self, key: Key) -> Future[DynamicBatcher]:
        with self._lock:
            pending = self._loading.get(key)
            if pending is not None:
                return pending
            pending = Future()
            found = self._loaded.get(key)
            if found is not None:
                pending.set_result(found)
                return pending
            self._loading[key] = pending
            self._states[key] = LOADING
            self._failed.pop(key, None)
        thread = threading.Thread(
            target=self._load_in_background,
            args=(key, pending),
            name=f"load-{key[0]}-{key[1]}",
            daemon=True,
        )
        thread.start()
        return pending

    def _load_in_background(self, key: Key, pending: Future[DynamicBatcher]) -> None:
        try:
            batcher = self._load(*key)
        except Exception as exc:  # recorded, and raised to every waiter
            logger.exception("model %s version %d failed to load", *key)
            with self._lock:
                self._loading.pop(key, None)
                self._states[key] = END
                self._failed[key] = f"{type(exc).__name__}: {exc}"
            pending.set_exception(exc)
            return
        with self._lock:
            self._loaded[key] = batcher
            self._loading.pop(key, None)
            self._states[key] = AVAILABLE
        pending.set_result(batcher)

    def refresh(self) -> None:
        """Rescan every served model: start loading a new highest version in the background,
        unload versions that are gone (``END``)."""
        names = set(self.names())
        with self._lock:
            names |= {n for n, _ in self._loaded}
        closing: list[DynamicBatcher] = []
        for name in sorted(names):
            try:
                found = self._scan(name)
            except FlaskModelError as exc:
                logger.warning("model %s: rescan failed: %s", name, exc)
                continue
            with self._lock:
                self._versions[name] = (time.monotonic(), found)
                loaded = [v for n, v in self._loaded if n == name]
                for version in loaded:
                    if version not in found:
                        closing.append(self._loaded.pop((name, version)))
                        self._states[(name, version)] = END
                        logger.info("model %s version %d unloaded (gone)", name, version)
                newest = found[-1] if found else None
                wanted = (
                    newest is not None
                    and (not loaded or newest > max(loaded))
                    and (name, newest) not in self._failed
                )
            if wanted and newest is not None:
                logger.info("model %s: new version %d found, loading", name, newest)
                self._start_load((name, newest))
        for batcher in closing:
            batcher.close()

    def _load(self, name: str, version: int) -> DynamicBatcher:
        config = self.config(name)
        runtime = self._open(name, version)
        started = time.perf_counter()
        runtime.load()
        if self._warmup:
            # Straight to the model: warm-up is not a batch worth counting. A model with a series
            # batch size is warmed at it too: its first call at a new size costs 2-3 calls.
            for batch in sorted({1, config.batch_size or 1}):
                warm_up(runtime, batch)
        size = (
            self._batching.max_batch_size
            if config.max_batch_size is None
            else config.max_batch_size
        )
        delay = (
            self._batching.max_batch_delay_ms
            if config.max_batch_delay_ms is None
            else config.max_batch_delay_ms
        )
        logger.info(
            "model %s version %d ready in %.2fs (batching: max %d examples, %.1f ms)",
            name,
            version,
            time.perf_counter() - started,
            size,
            delay,
        )
        return DynamicBatcher(
            runtime,
            max_batch_size=size,
            max_batch_delay=delay / 1000.0,
            tune=(
                self._batching.tune_batch_size
                if config.tune_batch_size is None
                else config.tune_batch_size
            ),
            batch_threads=(
                self._batching.batch_threads
                if config.batch_threads is None
                else config.batch_threads
            ),
        )

    def _open(self, name: str, version: int) -> ModelRuntime:
        path = self.root / name / str(version)
        remote = self._remotes.get(name)
        if remote is not None:
            return remote.runtime(name, version)
        if self._backend == "fake":
            return FakeRuntime.from_dir(name, version, path)
        return SavedModelRuntime(name, version, path)

    def load_all(self) -> dict[str, str]:
        """Load and warm the latest version of every model; returns errors by model name."""
        errors: dict[str, str] = {}
        for name in self.names():
            try:
                self.get(name)
            except Exception as exc:
                logger.exception("model %s failed to load", name)
                errors[name] = f"{type(exc).__name__}: {exc}"
        return errors

    def adverts(self) -> dict[str, ModelAdvert]:
        """What this process serves: loaded versions with their signatures and batch stats."""
        with self._lock:
            loaded = sorted(self._loaded.items())
            states = dict(self._states)
            configs = dict(self._configs)
        adverts: dict[str, ModelAdvert] = {}
        for (name, version), batcher in loaded:
            advert = adverts.get(name)
            if advert is None:
                config = configs.get(name, ModelConfig())
                advert = adverts[name] = ModelAdvert(
                    name=name,
                    versions=[],
                    latest=version,
                    specs={},
                    class_names=config.class_names,
                    version_labels=config.version_labels,
                )
            advert.versions.append(version)
            advert.specs[version] = batcher.spec
            advert.stats[version] = batcher.stats.snapshot()
            advert.latest = max(advert.latest, version)
        for (name, version), state in sorted(states.items()):
            if name in adverts:
                adverts[name].states[version] = state
        return adverts

    def close(self) -> None:
        with self._lock:
            for batcher in self._loaded.values():
                batcher.close()
            self._loaded.clear()
        for client in {id(c): c for c in self._remotes.values()}.values():
            client.close()


def _client(backend: str, target: str, timeout: float) -> RemoteClient:
    if backend == "tfserving_grpc":
        # grpc and the TF Serving protos load only in workers that use them.
        from flaskmodel.runtime.tfserving_grpc import TfServingGrpcClient  # noqa: PLC0415

        return TfServingGrpcClient(target, timeout=timeout)
    return TfServingRestClient(target, timeout=timeout)

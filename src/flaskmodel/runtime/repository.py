"""The model repository: ``<models_root>/<model>/<version>/`` plus an optional ``flaskmodel.json``.

The highest version serves unless a request names one. ``flaskmodel.json`` beside the versions
holds what a signature cannot say (class names, DICOM preprocessing, post-processor, series batch
size, dynamic batching knobs, version labels). Runtimes are loaded once per process, warmed up,
wrapped in their ``DynamicBatcher`` and cached; a new version directory is noticed on the next
lookup after ``rescan_seconds``. With the ``tfserving_rest`` backend the models are the configured
names and their versions those TF Serving reports AVAILABLE.

Thread-safe: Celery's task thread and the synchronous consumer thread look models up together.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flaskmodel.dicom.preprocess import PreprocessConfig
from flaskmodel.errors import InvalidRequest, ModelNotFound
from flaskmodel.runtime.base import ModelRuntime, warm_up
from flaskmodel.runtime.batcher import DynamicBatcher
from flaskmodel.runtime.fake import FakeRuntime
from flaskmodel.runtime.savedmodel import SavedModelRuntime
from flaskmodel.runtime.tfserving_rest import TfServingRestClient, TfServingRestRuntime
from flaskmodel.schemas import MODEL_NAME_PATTERN, ModelAdvert
from flaskmodel.settings import BatchingSettings, Settings

logger = logging.getLogger(__name__)

CONFIG_FILE = "flaskmodel.json"


class ModelConfig(BaseModel):
    """``<models_root>/<model>/flaskmodel.json``."""

    model_config = ConfigDict(extra="forbid")

    class_names: list[str] | None = None
    preprocess: PreprocessConfig = PreprocessConfig()
    postprocess: str = "monotonic"
    batch_size: int | None = None
    max_batch_size: int | None = Field(default=None, ge=0)
    max_batch_delay_ms: float | None = Field(default=None, ge=0)
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
        remote: TfServingRestClient | None = None,
        remote_models: list[str] | None = None,
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
        self._remote = remote
        self._remote_models = sorted(remote_models or [])
        self._lock = threading.RLock()
        self._loaded: dict[tuple[str, int], DynamicBatcher] = {}
        self._versions: dict[str, tuple[float, list[int]]] = {}
        self._configs: dict[str, ModelConfig] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, only: list[str] | None = None) -> ModelRepository:
        runtime = settings.runtime
        remote = None
        if runtime.backend == "tfserving_rest":
            assert runtime.tfserving_url is not None  # checked by Settings
            remote = TfServingRestClient(
                runtime.tfserving_url, timeout=runtime.tfserving_timeout_seconds
            )
        return cls(
            settings.models_root,
            backend=runtime.backend,
            warmup=runtime.warmup,
            batching=settings.batching,
            remote=remote,
            remote_models=runtime.tfserving_models,
            only=only if only is not None else (settings.worker.models or None),
        )

    def names(self) -> list[str]:
        """The models this process serves: all found (or configured remote), or ``only``."""
        if self._remote is not None:
            found = list(self._remote_models)
        elif not self.root.is_dir():
            found = []
        else:
            pattern = re.compile(MODEL_NAME_PATTERN)
            found = sorted(
                p.name
                for p in self.root.iterdir()
                if p.is_dir() and pattern.match(p.name) and self._scan(p.name)
            )
        return [name for name in found if self._only is None or name in self._only]

    def versions(self, name: str) -> list[int]:
        with self._lock:
            cached = self._versions.get(name)
            if cached is None or time.monotonic() - cached[0] > self._rescan:
                self._versions[name] = (time.monotonic(), self._scan(name))
            return self._versions[name][1]

    def _scan(self, name: str) -> list[int]:
        if self._remote is not None:
            return self._remote.versions(name) if name in self._remote_models else []
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
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' not found under {self.root}")
        if version is None:
            return versions[-1]
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
        """The loaded, warmed, batched runtime for ``name`` at ``version`` (latest when None)."""
        resolved = self.resolve(name, version)
        found = self._loaded.get((name, resolved))
        if found is not None:
            return found
        with self._lock:
            found = self._loaded.get((name, resolved))
            if found is None:
                found = self._load(name, resolved)
                self._loaded[(name, resolved)] = found
            return found

    def _load(self, name: str, version: int) -> DynamicBatcher:
        config = self.config(name)
        runtime = self._open(name, version)
        started = time.perf_counter()
        runtime.load()
        if self._warmup:
            warm_up(runtime)  # straight to the model: warm-up is not a batch worth counting
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
        return DynamicBatcher(runtime, max_batch_size=size, max_batch_delay=delay / 1000.0)

    def _open(self, name: str, version: int) -> ModelRuntime:
        path = self.root / name / str(version)
        if self._remote is not None:
            return TfServingRestRuntime(self._remote, name, version)
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
        return adverts

    def close(self) -> None:
        with self._lock:
            for batcher in self._loaded.values():
                batcher.close()
            self._loaded.clear()
        if self._remote is not None:
            self._remote.close()

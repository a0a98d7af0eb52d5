"""The model repository: ``<models_root>/<model>/<version>/`` plus an optional ``flaskmodel.json``.

The highest version serves unless a request names one. ``flaskmodel.json`` beside the versions
holds what a signature cannot say (class names, DICOM preprocessing, post-processor, batch size).
Runtimes are loaded once per process, warmed up, and cached; a new version directory is noticed
on the next lookup after ``rescan_seconds``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from flaskmodel.dicom.preprocess import PreprocessConfig
from flaskmodel.errors import InvalidRequest, ModelNotFound
from flaskmodel.runtime.base import ModelRuntime, warm_up
from flaskmodel.runtime.fake import FakeRuntime
from flaskmodel.runtime.savedmodel import SavedModelRuntime
from flaskmodel.schemas import MODEL_NAME_PATTERN, ModelAdvert

logger = logging.getLogger(__name__)

CONFIG_FILE = "flaskmodel.json"


class ModelConfig(BaseModel):
    """``<models_root>/<model>/flaskmodel.json``."""

    model_config = ConfigDict(extra="forbid")

    class_names: list[str] | None = None
    preprocess: PreprocessConfig = PreprocessConfig()
    postprocess: str = "monotonic"
    batch_size: int | None = None


class ModelRepository:
    """Finds, loads, warms and caches model versions for one worker process."""

    def __init__(
        self,
        root: Path,
        *,
        backend: str = "savedmodel",
        warmup: bool = True,
        rescan_seconds: float = 5.0,
    ) -> None:
        self.root = root
        self._backend = backend
        self._warmup = warmup
        self._rescan = rescan_seconds
        self._loaded: dict[tuple[str, int], ModelRuntime] = {}
        self._versions: dict[str, tuple[float, list[int]]] = {}
        self._configs: dict[str, ModelConfig] = {}

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        pattern = re.compile(MODEL_NAME_PATTERN)
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and pattern.match(p.name) and self._scan(p.name)
        )

    def versions(self, name: str) -> list[int]:
        cached = self._versions.get(name)
        if cached is None or time.monotonic() - cached[0] > self._rescan:
            self._versions[name] = (time.monotonic(), self._scan(name))
        return self._versions[name][1]

    def _scan(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        marker = "fake.json" if self._backend == "fake" else "saved_model.pb"
        return sorted(
            int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / marker).is_file()
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
        if name not in self._configs:
            path = self.root / name / CONFIG_FILE
            try:
                raw = json.loads(path.read_text()) if path.is_file() else {}
                self._configs[name] = ModelConfig.model_validate(raw)
            except (ValueError, ValidationError) as exc:
                raise InvalidRequest(f"model '{name}': bad {CONFIG_FILE}: {exc}") from exc
        return self._configs[name]

    def get(self, name: str, version: int | None = None) -> ModelRuntime:
        """The loaded, warmed runtime for ``name`` at ``version`` (latest when None)."""
        resolved = self.resolve(name, version)
        runtime = self._loaded.get((name, resolved))
        if runtime is None:
            runtime = self._open(name, resolved)
            started = time.perf_counter()
            runtime.load()
            if self._warmup:
                warm_up(runtime)
            logger.info(
                "model %s version %d ready in %.2fs", name, resolved, time.perf_counter() - started
            )
            self._loaded[(name, resolved)] = runtime
        return runtime

    def _open(self, name: str, version: int) -> ModelRuntime:
        path = self.root / name / str(version)
        if self._backend == "fake":
            return FakeRuntime.from_dir(name, version, path)
        return SavedModelRuntime(name, version, path)

    def load_all(self) -> dict[str, str]:
        """Load and warm the latest version of every model; returns errors by model name."""
        errors: dict[str, str] = {}
        for name in self.names():
            try:
                self.get(name)
                self.config(name)
            except Exception as exc:
                logger.exception("model %s failed to load", name)
                errors[name] = f"{type(exc).__name__}: {exc}"
        return errors

    def adverts(self) -> dict[str, ModelAdvert]:
        """What this process serves: loaded versions with their signatures."""
        adverts: dict[str, ModelAdvert] = {}
        for (name, version), runtime in sorted(self._loaded.items()):
            advert = adverts.get(name)
            if advert is None:
                advert = adverts[name] = ModelAdvert(
                    name=name,
                    versions=[],
                    latest=version,
                    specs={},
                    class_names=self._configs[name].class_names if name in self._configs else None,
                )
            advert.versions.append(version)
            advert.specs[version] = runtime.spec
            advert.latest = max(advert.latest, version)
        return adverts

    def close(self) -> None:
        for runtime in self._loaded.values():
            runtime.close()
        self._loaded.clear()

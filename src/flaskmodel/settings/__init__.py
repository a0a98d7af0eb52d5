"""FlaskModel's one typed configuration object and where its values come from.

Every setting comes from ``Settings``: environment variables prefixed ``FLASKMODEL_`` with nested
sections joined by ``__`` (``FLASKMODEL_REDIS__URL``, ``FLASKMODEL_JOBS__TTL_SECONDS``), then the
settings file (TOML, one table per section: ``[redis] url = ...``), then the defaults. The file is
``Settings.load(config)``'s ``config``, else ``$FLASKMODEL_CONFIG`` (empty: no file), else
``./flaskmodel.toml`` when it exists (``settings_file``); ``setting_origins`` says which source
set each value. Child processes get ``Settings.env()``: every value, and no file to read. Tests
build ``Settings(...)`` directly. The configuration table of docs/configuration.md is generated
from these fields (``make docs``, ``flaskmodel check --markdown``); a test fails when it is stale.
"""

from __future__ import annotations

import json
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from flaskmodel.settings.dicom import DicomSettings
from flaskmodel.settings.sections import (
    BatchingSettings,
    BrokerSettings,
    JobSettings,
    KvSettings,
    LogSettings,
    MetricsSettings,
    RedisSettings,
    RemoteModel,
    RuntimeSettings,
    Section,
    SecuritySettings,
    SeriesSettings,
    WebSettings,
    WorkerSettings,
)

__all__ = [
    "BatchingSettings",
    "BrokerSettings",
    "DicomSettings",
    "JobSettings",
    "KvSettings",
    "LogSettings",
    "MetricsSettings",
    "RedisSettings",
    "RemoteModel",
    "RuntimeSettings",
    "Section",
    "SecuritySettings",
    "SeriesSettings",
    "Settings",
    "WebSettings",
    "WorkerSettings",
    "mask_url",
    "setting_origins",
    "settings_file",
    "settings_table",
]

#: The environment variable naming the settings file (empty: read none).
CONFIG_ENV = "FLASKMODEL_CONFIG"
#: The settings file read when neither ``--config`` nor ``FLASKMODEL_CONFIG`` names one.
DEFAULT_CONFIG = Path("flaskmodel.toml")

# The file ``Settings.load(config)`` asked for, seen by ``settings_customise_sources`` (which
# pydantic-settings calls without arguments of ours); per thread and task, never global.
_chosen_file: ContextVar[Path | None] = ContextVar("flaskmodel_settings_file", default=None)


def settings_file(config: Path | None = None) -> Path | None:
    """The settings file to read: ``config``, else ``$FLASKMODEL_CONFIG`` (set but empty: none),
    else ``./flaskmodel.toml`` when it exists, else none. A file named explicitly must exist."""
    if config is None:
        named = os.environ.get(CONFIG_ENV)
        if named is None:
            return DEFAULT_CONFIG.absolute() if DEFAULT_CONFIG.is_file() else None
        if not named:
            return None
        config = Path(named)
    if not config.is_file():
        raise ValueError(f"settings file {config} does not exist (--config or {CONFIG_ENV})")
    return config.absolute()


def _file_source(settings_cls: type[BaseSettings], path: Path) -> TomlConfigSettingsSource:
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"settings file {path} is not valid TOML: {exc}") from exc


class Settings(BaseSettings):
    """All of FlaskModel's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="FLASKMODEL_",
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the settings file, then the defaults (no
        ``.env`` and no secrets directory: those are the process manager's business)."""
        path = settings_file(_chosen_file.get())
        if path is None:
            return init_settings, env_settings
        return init_settings, env_settings, _file_source(settings_cls, path)

    @classmethod
    def load(cls, config: Path | None = None) -> Settings:
        """The settings of a command: the environment over ``config`` (else the file that
        ``settings_file`` finds) over the defaults."""
        token = _chosen_file.set(config)
        try:
            return cls()
        finally:
            _chosen_file.reset(token)

    models_root: Path = Path("var/models")
    """Model repository: `<models_root>/<model>/<version>/` holds a SavedModel."""
    data_root: Path = Path("var/data")
    """DICOM data root: a series job reads `<data_root>/<series_uid>/`."""
    run_dir: Path = Path("var/run")
    """Where `flaskmodel up` keeps its generated configs, sockets, logs and Redis data."""
    cpu_policy: Literal["batch", "inherit"] = "batch"
    """CPU scheduling policy of FlaskModel's processes (Linux): `batch` runs them as `SCHED_BATCH`,
    so a process that wakes up (nginx with a request, Redis, the worker) does not preempt the one
    running, which on busy cores saves most context switches; `inherit`: the policy they were
    started with. A real-time or idle policy is never changed."""
    redis: RedisSettings = Field(default_factory=RedisSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    series: SeriesSettings = Field(default_factory=SeriesSettings)
    kv: KvSettings = Field(default_factory=KvSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        jobs = self.jobs
        if jobs.soft_time_limit >= jobs.time_limit:
            raise ValueError("jobs.soft_time_limit must be below jobs.time_limit")
        # A lease shorter than the hard limit redelivers a job that is still running.
        if jobs.visibility_timeout <= jobs.time_limit:
            raise ValueError("jobs.visibility_timeout must exceed jobs.time_limit")
        sentinel_url = (self.redis.url or "").startswith("sentinel://")
        if sentinel_url != bool(self.redis.sentinel_master):
            raise ValueError(
                "redis.sentinel_master and a sentinel:// redis.url go together (one without the "
                "other cannot find the primary)"
            )
        if self.batching.sync_timeout_seconds > self.batching.max_timeout_seconds:
            raise ValueError("batching.sync_timeout_seconds must not exceed max_timeout_seconds")
        return self

    def redis_url(self) -> str:
        """The Redis URL to connect to; raises when none is configured."""
        if not self.redis.url:
            raise ValueError(
                "no Redis configured: set FLASKMODEL_REDIS__URL or use `flaskmodel up`"
            )
        return self.redis.url

    def env(self) -> dict[str, str]:
        """These settings as FLASKMODEL_* environment variables (for child processes): every
        value, and an empty ``FLASKMODEL_CONFIG`` so that a child reads no settings file (the
        values of the parent's file are among these already)."""
        out: dict[str, str] = {CONFIG_ENV: ""}
        for key, value in _flatten(self.model_dump(mode="python"), Settings):
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, list | dict):
                # pydantic-settings reads complex values as JSON; secrets inside them (API keys,
                # a DICOMweb source's password) go as their values.
                text = json.dumps(value, default=_json_value)
            else:
                text = str(value).lower() if isinstance(value, bool) else str(value)
            out["FLASKMODEL_" + key.upper()] = text
        return out

    def masked(self) -> list[tuple[str, str]]:
        """(env name, value) pairs with secrets and URL passwords masked, for display."""
        rows = []
        for key, value in _flatten(self.model_dump(mode="python"), Settings):
            if isinstance(value, SecretStr) or (
                isinstance(value, list) and any(isinstance(v, SecretStr) for v in value)
            ):
                shown = "**********"
            elif isinstance(value, str) and "://" in value:
                shown = mask_url(value)
            else:
                shown = "" if value is None else str(value)
            rows.append(("FLASKMODEL_" + key.upper(), shown))
        return rows


def setting_origins(config: Path | None = None) -> tuple[Path | None, dict[str, str]]:
    """The settings file in force, and where each value set by a source came from: ``env`` or
    ``file`` per variable name (``FLASKMODEL_REDIS__URL``); the others are defaults. The
    environment wins over the file, as in ``Settings.load``."""
    path = settings_file(config)
    origins: dict[str, str] = {}
    if path is not None:
        for name in _set_names(_file_source(Settings, path)(), Settings):
            origins["FLASKMODEL_" + name.upper()] = "file"
    for name in _set_names(EnvSettingsSource(Settings)(), Settings):
        origins["FLASKMODEL_" + name.upper()] = "env"
    return path, origins


def _set_names(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> list[str]:
    """The (``section__field``) names of the values in a source's answer; a section given whole
    names each field in it."""
    names: list[str] = []
    for key, value in data.items():
        field = model.model_fields.get(key.lower())
        if field is None:  # not a setting: validation reports it
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            if isinstance(value, dict):
                names.extend(_set_names(value, annotation, f"{prefix}{key.lower()}__"))
            continue
        names.append(prefix + key.lower())
    return names


def _json_value(value: Any) -> str:
    """What JSON cannot write inside a complex setting: secrets as their value, paths as text."""
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def _flatten(
    data: dict[str, Any], model: type[BaseModel], prefix: str = ""
) -> list[tuple[str, Any]]:
    """(name, value) per field; sections recurse, other dicts (e.g. mappings) stay whole."""
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        annotation = model.model_fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            rows.extend(_flatten(value, annotation, f"{prefix}{key}__"))
        else:
            rows.append((prefix + key, value))
    return rows


def mask_url(url: str) -> str:
    """``url`` with any password replaced by asterisks."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":**********@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def settings_table() -> str:
    """The configuration table of docs/configuration.md (Markdown), generated from the fields."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, default, doc in _field_rows(Settings, "FLASKMODEL_"):
        lines.append(f"| `{name}` | {default} | {doc} |")
    return "\n".join(lines) + "\n"


def _field_rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            rows.extend(_field_rows(annotation, f"{prefix}{name.upper()}__"))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list | dict):  # as it is written in the environment: JSON
            default = json.dumps(to_jsonable_python(default, exclude_none=True))
        shown = "(empty)" if default is None else f"`{default}`"
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append((prefix + name.upper(), shown, doc))
    return rows

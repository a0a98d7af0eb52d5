"""Settings: env parsing, validation, masking, and the generated table's completeness (its
freshness in docs/configuration.md is ``tests/test_docs.py``'s)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from flaskmodel.cli import main
from flaskmodel.settings import Settings, mask_url, settings_table


def test_env_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASKMODEL_REDIS__URL", "redis://127.0.0.1:7000/2")
    monkeypatch.setenv("FLASKMODEL_JOBS__TTL_SECONDS", "60")
    settings = Settings()
    assert settings.redis.url == "redis://127.0.0.1:7000/2"
    assert settings.jobs.ttl_seconds == 60


def test_defaults_hold_no_redis_and_no_secret() -> None:
    settings = Settings()
    assert settings.redis.url is None
    assert settings.redis.password is None
    with pytest.raises(ValueError, match="no Redis configured"):
        settings.redis_url()


def test_visibility_timeout_must_exceed_the_hard_limit() -> None:
    with pytest.raises(ValidationError, match="visibility_timeout"):
        Settings(jobs={"time_limit": 100, "soft_time_limit": 90, "visibility_timeout": 100})
    with pytest.raises(ValidationError, match="soft_time_limit"):
        Settings(jobs={"time_limit": 100, "soft_time_limit": 100})


def test_env_round_trip() -> None:
    settings = Settings(
        redis={"url": "redis://x:1/0", "password": "s3cret"}, log={"json_lines": True}
    )
    env = settings.env()
    assert env["FLASKMODEL_REDIS__PASSWORD"] == "s3cret"
    assert env["FLASKMODEL_LOG__JSON_LINES"] == "true"
    assert "FLASKMODEL_KV__DEFAULT_TTL_SECONDS" not in env


def test_remote_models_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = {
        "Tiny": {"backend": "tfserving_grpc", "target": "tfs:8500", "timeout_seconds": 2},
        "echo": {"backend": "tfserving_rest", "target": "http://tfs:8501"},
    }
    env = Settings(runtime={"remote_models": remote}).env()
    # One JSON variable, so model names keep their case.
    monkeypatch.setenv(
        "FLASKMODEL_RUNTIME__REMOTE_MODELS", env["FLASKMODEL_RUNTIME__REMOTE_MODELS"]
    )
    parsed = Settings().runtime
    assert parsed.backend == "savedmodel"  # still the default of every other model
    assert parsed.remote_models["Tiny"].target == "tfs:8500"
    assert parsed.remote_models["Tiny"].timeout_seconds == 2
    assert parsed.remote_models["echo"].backend == "tfserving_rest"
    with pytest.raises(ValidationError, match="host:port"):
        Settings(runtime={"remote_models": {"m": {"backend": "tfserving_grpc", "target": "x"}}})
    with pytest.raises(ValidationError, match="http"):
        Settings(runtime={"remote_models": {"m": {"backend": "tfserving_rest", "target": "h:1"}}})
    with pytest.raises(ValidationError, match="tfserving_grpc"):
        Settings(runtime={"remote_models": {"m": {"backend": "grpc", "target": "h:1"}}})


def test_masking() -> None:
    assert mask_url("redis://:pw@host:6379/0") == "redis://:**********@host:6379/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"
    shown = dict(Settings(redis={"url": "redis://u:pw@h/0", "password": "pw2"}).masked())
    assert "pw" not in shown["FLASKMODEL_REDIS__URL"].replace("**********", "")
    assert shown["FLASKMODEL_REDIS__PASSWORD"] == "**********"


def test_check_command_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASKMODEL_REDIS__PASSWORD", "hunter2")
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "FLASKMODEL_REDIS__PASSWORD=**********" in result.output


def test_every_field_is_documented() -> None:
    for line in settings_table().splitlines()[2:]:
        assert not line.rstrip().endswith("|  |"), f"undocumented setting: {line}"

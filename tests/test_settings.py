"""Settings: env parsing, the settings file (precedence env > file > defaults, which file, where
each value came from, child processes), validation, masking, and the generated table's
completeness (its freshness in docs/configuration.md is ``tests/test_docs.py``'s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from flaskmodel.cli import main
from flaskmodel.settings import (
    Settings,
    mask_url,
    setting_origins,
    settings_file,
    settings_table,
)


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


# --- the settings file ------------------------------------------------------------------------

FILE = """
models_root = "/srv/models"

[redis]
url = "redis://127.0.0.1:7000/2"
password = "from-file-secret"

[web]
port = 9000

[jobs]
ttl_seconds = 60

[worker]
models = ["tiny", "echo"]
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no FLASKMODEL_* variables."""
    for name in os.environ:
        if name.startswith("FLASKMODEL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_env_over_file_over_defaults(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "flaskmodel.toml").write_text(FILE)
    monkeypatch.setenv("FLASKMODEL_WEB__PORT", "9100")
    settings = Settings()  # ./flaskmodel.toml, found by every entry point
    assert settings.web.port == 9100  # env
    assert settings.jobs.ttl_seconds == 60  # file
    assert settings.models_root == Path("/srv/models")
    assert settings.worker.models == ["tiny", "echo"]  # a TOML list, no JSON
    assert settings.redis.url == "redis://127.0.0.1:7000/2"
    assert settings.redis.password is not None
    assert settings.redis.password.get_secret_value() == "from-file-secret"
    assert settings.web.host == "127.0.0.1"  # default
    # Arguments (what tests and command-line options pass) come before everything.
    assert Settings(web={"port": 1}).web.port == 1


def test_which_file_is_read(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "flaskmodel.toml").write_text("[web]\nport = 1111\n")
    other = workdir / "etc" / "other.toml"
    other.parent.mkdir()
    other.write_text("[web]\nport = 2222\n")
    assert settings_file() == workdir / "flaskmodel.toml"
    assert Settings.load(other).web.port == 2222  # --config
    monkeypatch.setenv("FLASKMODEL_CONFIG", str(other))
    assert Settings().web.port == 2222
    assert Settings.load(workdir / "flaskmodel.toml").web.port == 1111  # --config wins
    monkeypatch.setenv("FLASKMODEL_CONFIG", "")  # set but empty: no file at all
    assert settings_file() is None and Settings().web.port == 8000
    monkeypatch.setenv("FLASKMODEL_CONFIG", str(workdir / "missing.toml"))
    with pytest.raises(ValueError, match=r"missing\.toml does not exist"):
        Settings()
    monkeypatch.delenv("FLASKMODEL_CONFIG")
    (workdir / "flaskmodel.toml").unlink()
    assert settings_file() is None and Settings().web.port == 8000


def test_a_bad_file_is_refused_with_its_name(workdir: Path) -> None:
    broken = workdir / "broken.toml"
    broken.write_text("[web\nport = 1\n")
    with pytest.raises(ValueError, match=r"broken\.toml is not valid TOML"):
        Settings.load(broken)
    typo = workdir / "typo.toml"
    typo.write_text("[web]\nprot = 1\n")
    with pytest.raises(ValidationError, match=r"web\.prot"):
        Settings.load(typo)
    result = CliRunner().invoke(main, ["--config", str(typo), "check"])
    assert result.exit_code == 1
    assert "invalid settings" in result.output and "web.prot" in result.output


def test_check_shows_where_each_value_came_from(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = workdir / "conf" / "flaskmodel.toml"
    config.parent.mkdir()
    config.write_text(FILE)
    monkeypatch.setenv("FLASKMODEL_WEB__PORT", "9100")
    monkeypatch.setenv("FLASKMODEL_REDIS__PASSWORD", "from-env-secret")
    result = CliRunner().invoke(main, ["--config", str(config), "check"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"# settings file: {config}"
    rows = {line.split()[1].split("=", 1)[0]: line.split()[0] for line in lines[1:]}
    assert rows["FLASKMODEL_WEB__PORT"] == "env"
    assert rows["FLASKMODEL_JOBS__TTL_SECONDS"] == "file"
    assert rows["FLASKMODEL_WORKER__MODELS"] == "file"
    assert rows["FLASKMODEL_WEB__HOST"] == "default"
    assert "env      FLASKMODEL_REDIS__PASSWORD=**********" in lines
    assert "file     FLASKMODEL_JOBS__TTL_SECONDS=60" in lines
    assert "secret" not in result.output
    assert len(rows) == len(settings_table().splitlines()) - 2  # every setting, once

    as_json = CliRunner().invoke(main, ["--config", str(config), "check", "--json"])
    assert as_json.exit_code == 0, as_json.output
    shown = json.loads(as_json.output)
    assert shown["file"] == str(config)
    assert shown["settings"]["FLASKMODEL_REDIS__URL"] == {
        "value": "redis://127.0.0.1:7000/2",
        "source": "file",
    }
    assert shown["settings"]["FLASKMODEL_REDIS__PASSWORD"]["value"] == "**********"
    assert shown["settings"]["FLASKMODEL_DATA_ROOT"]["source"] == "default"


def test_a_whole_section_in_the_env_names_its_fields(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASKMODEL_JOBS", json.dumps({"ttl_seconds": 5}))
    path, origins = setting_origins()
    assert path is None
    assert origins == {"FLASKMODEL_JOBS__TTL_SECONDS": "env"}


def test_a_file_value_reaches_a_child_process(workdir: Path) -> None:
    """Child processes (``flaskmodel up``'s programs, ``serve``'s gunicorn) get ``Settings.env()``:
    the file's values arrive in their environment, and they read no file of their own."""
    (workdir / "flaskmodel.toml").write_text(FILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")}
    env.update(Settings().env())
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "flaskmodel.toml").write_text("[jobs]\nttl_seconds = 1\n[broker]\nurl = 'x'\n")
    done = subprocess.run(
        [sys.executable, "-m", "flaskmodel", "check", "--json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["file"] is None
    settings = shown["settings"]
    assert settings["FLASKMODEL_JOBS__TTL_SECONDS"] == {"value": "60", "source": "env"}
    assert settings["FLASKMODEL_WORKER__MODELS"]["value"] == "['tiny', 'echo']"
    assert settings["FLASKMODEL_BROKER__URL"] == {"value": "", "source": "default"}

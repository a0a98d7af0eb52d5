"""The FlaskModel stacks ``flaskmodel bench`` drives: ``flaskmodel up`` subprocesses, exactly what
users run, each with its own run directory (emptied first, Redis data included, so every run
starts alike) and its own free ports (the web port and the DICOM front door's), so two stacks, or
a developer's own, never collide.

The keys-on stack has one generated API key and a per-key rate limit set far above what the bench
can send (it must count every request, never refuse one); ``check_keys`` proves both are in force
before anything is measured.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from flaskmodel.bench.payloads import Scenario, answers, post
from flaskmodel.deploy.stack import free_port

#: The keys-on stack's rate limit: counted on every request, never reached by the bench.
RATE_LIMIT = 1_000_000


@dataclass
class Stack:
    """A running ``flaskmodel up``: its process (a session leader), base URL and settings."""

    process: subprocess.Popen[bytes]
    base: str
    settings: dict[str, str]
    log: Path
    """``flaskmodel up``'s own output."""
    headers: dict[str, str] = field(default_factory=dict)
    """What every request must carry (the API key)."""

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"flaskmodel up exited with {self.process.returncode}:\n{out}")
            if answers(self.base + "/readyz", timeout=2):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the stack at {self.base} did not become ready")

    def stop(self) -> None:
        """SIGTERM the stack's process group and wait for ``flaskmodel up`` to stop it."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        self.process.wait(120)


def start_stack(run_dir: Path, models_root: Path, data_root: Path, *, keys: bool = False) -> Stack:
    """Start ``flaskmodel up`` on free ports (not yet ready: call ``Stack.wait_ready``)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    port = free_port()
    settings = {
        "FLASKMODEL_MODELS_ROOT": str(models_root),
        "FLASKMODEL_DATA_ROOT": str(data_root),
        "FLASKMODEL_RUN_DIR": str(run_dir),
        "FLASKMODEL_LOG__LEVEL": "WARNING",
        "FLASKMODEL_DICOM__PORT": str(free_port()),
        "FLASKMODEL_DICOM__HTTP_PORT": str(free_port()),
    }
    secret: dict[str, str] = {}
    key = None
    if keys:
        key = secrets.token_urlsafe(32)
        secret["FLASKMODEL_SECURITY__API_KEYS"] = json.dumps([f"bench {key}"])
        settings["FLASKMODEL_SECURITY__RATE_LIMIT_PER_SECOND"] = str(RATE_LIMIT)
        settings["FLASKMODEL_SECURITY__RATE_LIMIT_BURST"] = str(RATE_LIMIT)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")},
        **settings,
        **secret,
    }
    log = run_dir.with_name(run_dir.name + ".log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flaskmodel", "up", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    if keys:
        settings["FLASKMODEL_SECURITY__API_KEYS"] = '["bench <one generated key>"]'
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    settings["web.port"] = str(port)
    return Stack(process, f"http://127.0.0.1:{port}", settings, log, headers)


def check_keys(stack: Stack, scenario: Scenario) -> None:
    """A request without the key gets 401; with it, 200 and the rate limit's header fields (so
    the limiter really ran on it)."""
    status, _, body = post(stack.base, scenario)
    if status != 401:
        raise RuntimeError(f"keys-on stack: a request without the key got {status}, not 401")
    status, fields, body = post(stack.base, scenario, stack.headers)
    if status != 200:
        raise RuntimeError(f"keys-on stack: a request with the key got {status}: {body[:300]!r}")
    missing = {"ratelimit", "ratelimit-policy"} - set(fields)
    if missing:
        raise RuntimeError(f"keys-on stack: the answer lacks {sorted(missing)}: rate limit off?")

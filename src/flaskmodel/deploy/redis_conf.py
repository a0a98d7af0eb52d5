"""redis.conf of the foreground stack's own redis-server, and the stack's Redis password.

The server listens on a unix socket only, keeps AOF (``everysec``) data in the run directory and
lets in only clients with the password, which appears in the config as its SHA-256 alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path

from flaskmodel.deploy.files import fill, write
from flaskmodel.deploy.paths import system_binary

logger = logging.getLogger(__name__)


def write_redis_conf(conf: Path, *, sock: Path, data_dir: Path, password: str) -> list[str]:
    """Write ``conf`` (and create ``data_dir``); returns the command that runs redis-server on it.

    Only the password's SHA-256 is written (Redis ACL's ``#<hash>`` form); the password reaches
    the programs through supervisord's environment."""
    data_dir.mkdir(exist_ok=True)
    digest = hashlib.sha256(password.encode()).hexdigest()
    write(
        conf,
        fill(
            "redis.conf",
            socket=_quote(sock),
            data_dir=_quote(data_dir),
            password_sha256=digest,
        ),
    )
    redis_server = system_binary("redis-server", Path("/usr/bin/redis-server"))
    if redis_server is None:
        raise FileNotFoundError(
            "redis-server is not installed: install it or set FLASKMODEL_REDIS__URL"
        )
    return [str(redis_server), str(conf)]


def stack_redis_password(path: Path) -> str:
    """The stack's Redis password from ``path`` (mode 0600), generated there on first use and
    kept for later runs (so ``redis-cli`` users can read it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        password = path.read_text("utf-8").strip()
        if len(password) >= 32:
            return password
        logger.warning("%s holds no usable password; generating a new one", path)
        path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    password = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(password + "\n")
    return password


def _quote(path: Path) -> str:
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'

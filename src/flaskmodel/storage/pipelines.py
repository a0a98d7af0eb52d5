"""Lua scripts inside pipelines, without redis-py's extra round trip.

A redis-py ``Script`` called on a pipeline makes every ``execute`` ask Redis ``SCRIPT EXISTS``
first: one more round trip on the hot paths that batch their steps precisely to save them. Here
a script is queued as a plain ``EVALSHA`` (``queue_script``) and ``execute`` loads a script Redis
no longer has (after a restart its script cache is empty) and runs just those calls again, each
on its own: the pipeline's other commands ran once, and a script call that failed with
``NOSCRIPT`` did nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError

logger = logging.getLogger(__name__)


def queue_script(pipe: Pipeline, script: Script, keys: list[str], args: list[Any]) -> None:
    """Queue ``script`` on ``pipe`` as an ``EVALSHA`` (run it with ``execute``)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def execute(pipe: Pipeline, *scripts: Script) -> list[Any]:
    """Run ``pipe``, whose ``queue_script`` calls use ``scripts``; raises the first error."""
    stack = [args for args, _ in pipe.command_stack]
    replies: list[Any] = pipe.execute(raise_on_error=False)
    by_sha = {script.sha: script for script in scripts}
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError) and stack[i][1] in by_sha:
            script = by_sha[stack[i][1]]
            logger.info("Redis lost a script (restarted?); loading it again")
            script.sha = script.registered_client.script_load(script.script)
            replies[i] = script.registered_client.execute_command(*stack[i])  # type: ignore[no-untyped-call]
        elif isinstance(reply, Exception):
            raise reply
    return replies

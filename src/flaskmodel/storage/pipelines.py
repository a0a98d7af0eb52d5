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
from collections.abc import Callable, Iterable, Sequence
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

    def load(script: Script) -> Any:
        return script.registered_client.script_load(script.script)

    def run(script: Script, command: Sequence[Any]) -> Any:
        return script.registered_client.execute_command(*command)  # type: ignore[no-untyped-call]

    return rerun_lost_scripts(replies, stack, scripts, load, run)


def rerun_lost_scripts(
    replies: list[Any],
    commands: Sequence[Sequence[Any]],
    scripts: Iterable[Script],
    load: Callable[[Script], str | bytes],
    run: Callable[[Script, Sequence[Any]], Any],
) -> list[Any]:
    """``replies`` of ``commands`` sent together, with each ``EVALSHA`` of one of ``scripts``
    that Redis answered ``NOSCRIPT`` run again (``run``) once its script is loaded again
    (``load``, which answers the sha); raises the first other error."""
    by_sha = {script.sha: script for script in scripts}
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError) and commands[i][1] in by_sha:
            script = by_sha[commands[i][1]]
            logger.info("Redis lost a script (restarted?); loading it again")
            sha = load(script)
            script.sha = sha.decode() if isinstance(sha, bytes) else sha
            replies[i] = run(script, commands[i])
        elif isinstance(reply, Exception):
            raise reply
    return replies

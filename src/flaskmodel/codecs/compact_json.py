"""Compact JSON bytes for the hot paths: orjson, and the standard library for what orjson cannot
write (an integer past 64 bits), as the app's JSON provider does (``web/json_provider.py``)."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any, *, newline: bool = False) -> bytes:
    """``obj`` as compact JSON (keys in the order they were built), with a final newline if
    ``newline``."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE if newline else 0)
    except TypeError:
        text = json.dumps(obj, separators=(",", ":"))
        return (text + "\n" if newline else text).encode()

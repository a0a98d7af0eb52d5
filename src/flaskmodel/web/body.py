"""Request bodies: JSON parsed whatever the content type, with clear 400s instead of 500s."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from flaskmodel.codecs.fast_json import has_long_int, lift_tensor
from flaskmodel.errors import InvalidRequest
from flaskmodel.schemas import ModelSpec

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def is_whole_number(text: str) -> bool:
    """Whether ``text`` is ASCII digits only (``str.isdigit`` also takes "²", which ``int`` does
    not: a query or path segment checked that way answered 500)."""
    return text.isascii() and text.isdigit()


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"malformed JSON body: {name} is not a valid JSON number")


# Bodies from this size on are worth reading a float tensor from the text (``lift_tensor``).
LIFT_MIN_BYTES = 16_384


def parse_tensor_body(raw: bytes, spec: ModelSpec, keys: tuple[str, ...]) -> Any:
    """The body ``raw`` as JSON, its big float tensor under one of ``keys`` (if any) read as a
    ``FlatTensor`` without nested lists (``lift_tensor``); errors as ``parse_json``'s."""
    # A small body is parsed faster as it is than scanned for a tensor first.
    lifted = lift_tensor(raw, spec, keys) if len(raw) >= LIFT_MIN_BYTES else None
    return parse_json(raw) if lifted is None else lifted


def parse_json(raw: bytes) -> Any:
    """``raw`` parsed as JSON, with a 400 naming what is wrong instead of a 500.

    orjson parses; the standard library takes over where orjson refuses the text (to name the
    error as it always has, or to take what it always took: UTF-16, 1e400 read as infinity and
    refused later) and where an integer may not fit 64 bits (orjson would make it a float).
    """
    if not raw.strip():
        raise InvalidRequest("request body is empty; expected JSON")
    if not has_long_int(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # The standard library's answer below is the one clients have always had.
            logger.debug("orjson refused the body (%s); parsing it with the json module", exc)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise InvalidRequest("malformed JSON body: nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest("malformed JSON body: not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"malformed JSON body: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from exc
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit conversion limit
        raise InvalidRequest(f"malformed JSON body: {exc}") from exc


def parse(model: type[M], data: Any) -> M:
    """``data`` validated into ``model``; a 400 naming each bad field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from exc
    except RecursionError as exc:
        raise InvalidRequest("request nested too deeply") from exc


def validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)


def read_prefer(value: str | None) -> tuple[bool, float | None]:
    """RFC 7240 ``Prefer`` (the header's value, several comma-joined): respond-async, and
    wait=<seconds>; anything else is ignored."""
    respond_async = False
    wait = None
    for token in (value or "").split(","):
        name, _, argument = token.split(";")[0].strip().partition("=")
        name = name.strip().lower()
        if name == "respond-async":
            respond_async = True
        elif name == "wait":
            try:
                wait = max(0.0, float(argument.strip().strip('"')))
            except ValueError:
                logger.info("ignored Prefer: wait=%r", argument[:32])
    return respond_async, wait

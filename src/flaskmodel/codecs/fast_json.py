"""JSON text with big float tensors: a fast path that reads them without nested Python lists.

A CT slice in TF Serving's row format (``{"instances": [[[[0.1],[0.2],...]]]}``) is 65,536
numbers in 131,072 lists; parsing that into Python objects and turning them into an array costs
several times what the numbers alone cost. ``lift_tensor`` finds the tensor's bytes in the body,
checks that their brackets and commas (the *skeleton*) are exactly those of a regular array of the
shape the signature expects, and has simdjson parse the array and copy its numbers into one flat
buffer in C (strict JSON, so a number off a leaf is refused). Anything it is not sure of (strings,
null, booleans, ragged or empty lists, b64 or keyed rows, unknown inner dimensions, a number that
may have been an integer past 64 bits) makes it answer None, and the caller parses the body the
general way, with the same errors as ever.

``has_long_int`` is shared with the body parser: orjson reads an integer past 64 bits as a float,
so text with a run of 19 or more digits (not after a decimal point) is parsed by the standard
library instead, and integers keep their exact value.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

from flaskmodel.schemas import ModelSpec

FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})

_DIGITS = b"0123456789"
_NUMBER_CHARS = _DIGITS + b".eE+-"
_WHITESPACE = b" \t\n\r"

# Digits → "0", "." kept, anything else → "X": "X" + 19 zeros is an integer part of 19+ digits.
_LONG_INT_TABLE = bytes(
    ord("0") if c in _DIGITS else ord(".") if c == ord(".") else ord("X") for c in range(256)
)
_LONG_RUN = b"0" * 19

# A simdjson parser kept for the next body: a parser keeps the buffers it grew for its largest
# document, and a new one per body allocated them again each time (2 ms of a CT slice's 10 ms of
# gunicorn CPU as TF Serving JSON). A parse never yields to another greenlet, so one serves a
# gevent worker; a thread that finds it taken makes its own. A parser that read a span over
# KEEP_PARSER_BYTES (it holds about 3.5 times that) is let go, so what stays held is bounded.
KEEP_PARSER_BYTES = 8 << 20
_PARSERS: list[simdjson.Parser] = []

# What a numeric array's text is made of → 0; anything else → 1 (where the array must have ended).
_ARRAY_END_TABLE = bytes(0 if c in _NUMBER_CHARS + _WHITESPACE + b"[]," else 1 for c in range(256))
_COLON = re.compile(rb"[ \t\n\r]*:[ \t\n\r]*\[")


def has_long_int(text: bytes) -> bool:
    """Whether ``text`` may hold an integer orjson would read as a float (19+ digits)."""
    mapped = text.translate(_LONG_INT_TABLE)
    return mapped.startswith(_LONG_RUN) or b"X" + _LONG_RUN in mapped


@dataclass(frozen=True)
class FlatTensor:
    """A tensor's numbers read flat from JSON text, and the regular shape their brackets had."""

    numbers: np.ndarray
    shape: tuple[int, ...]

    def array(self) -> np.ndarray:
        """The numbers in their shape, dtype as numpy infers it (int64 or float64)."""
        return self.numbers.reshape(self.shape)


def lift_tensor(raw: bytes, spec: ModelSpec, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The JSON object ``raw`` with its tensor (the value of the first of ``keys`` found) as a
    ``FlatTensor``; None where the fast path does not apply (parse ``raw`` the general way).

    Only for a model with one input of a float dtype whose dimensions past the batch are known.
    """
    if len(spec.inputs) != 1:
        return None
    tensor = spec.inputs[0]
    inner = tensor.shape[1:]
    if tensor.dtype not in FLOAT_DTYPES or not tensor.shape or None in inner:
        return None
    for key in keys:
        span = _find_array(raw, key)
        if span is not None:
            break
    else:
        return None
    start, end = span
    flat = read_numbers(raw[start:end], tuple(d for d in inner if d is not None))
    if flat is None:
        return None
    document = _rest_of_document(raw, start, end, key)
    if document is not None:
        document[key] = flat
    return document


def _find_array(raw: bytes, key: str) -> tuple[int, int] | None:
    """Where the array after the first ``"key":`` starts and (at most) ends."""
    needle = b'"' + key.encode() + b'"'
    at = raw.find(needle)
    if at < 0:
        return None
    colon = _COLON.match(raw, at + len(needle))
    if colon is None:
        return None
    start = colon.end() - 1
    end = raw.rfind(b"]") + 1
    # The last member ends at the last "]" (no key, so no '"', in between); any other member
    # ends where the characters a numeric array is made of end.
    if raw[end:].strip(_WHITESPACE) != b"}" or raw.find(b'"', start, end) >= 0:
        stop = raw.translate(_ARRAY_END_TABLE).find(b"\x01", start)
        end = raw.rfind(b"]", start, len(raw) if stop < 0 else stop) + 1
    return (start, end) if end > start else None


def _rest_of_document(raw: bytes, start: int, end: int, key: str) -> dict[str, Any] | None:
    """The object with the span replaced, when the span is exactly the top-level ``key``'s value.

    Parsed twice, with the placeholders 0 and 1: only the top-level value of ``key`` itself can
    read as each of them in turn (a span inside a string or a nested object could not).
    """
    document: dict[str, Any] = {}
    for placeholder in (0, 1):
        text = raw[:start] + str(placeholder).encode() + raw[end:]
        if has_long_int(text):
            return None
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(parsed, dict):
            return None
        value = parsed.get(key)
        if type(value) is not int or value != placeholder:
            return None
        document = parsed
    return document


def read_numbers(span: bytes, inner: tuple[int, ...]) -> FlatTensor | None:
    """The numbers of ``span``, a JSON array of shape ``[batch, *inner]`` (None otherwise)."""
    per_example = math.prod(inner)
    if per_example == 0:
        return None
    skeleton = span.translate(None, _NUMBER_CHARS + _WHITESPACE)
    count = skeleton.count(b",") + 1
    if count % per_example:
        return None
    shape = (count // per_example, *inner)
    if skeleton != _skeleton(shape):
        return None
    numbers = _flat_numbers(span)
    if numbers is None or numbers.size != count:
        return None  # e.g. "[[],[1]]": the skeleton of two rows, one number
    if numbers.dtype.kind == "f" and np.abs(numbers).max() >= 2.0**63:
        return None  # an integer past 64 bits, kept exact by the general path
    return FlatTensor(numbers, shape)


def _flat_numbers(span: bytes) -> np.ndarray | None:
    """The numbers of the valid JSON array ``span`` in one flat array: int64 when every one is
    an integer that fits, float64 otherwise (as numpy infers from Python numbers); None when the
    text is not valid JSON made of numbers, or holds one past 64 bits.

    simdjson parses the text with its brackets, so a number that is not at a leaf ("[1[,2]]",
    "[[1]2]") is invalid JSON here, and its numbers are correctly rounded doubles, as ``json``'s.
    """
    parser = _PARSERS.pop() if _PARSERS else simdjson.Parser()
    try:
        return _parse_numbers(parser, span)
    finally:
        if len(span) <= KEEP_PARSER_BYTES and not _PARSERS:
            _PARSERS.append(parser)


def _parse_numbers(parser: simdjson.Parser, span: bytes) -> np.ndarray | None:
    """``_flat_numbers`` with ``parser`` (no proxy of its document outlives the call, so it can
    parse again)."""
    try:
        array = parser.parse(span)
    except (ValueError, RuntimeError):  # invalid JSON, or a number past 64 bits
        return None
    if not isinstance(array, simdjson.Array):
        return None
    try:
        return np.frombuffer(array.as_buffer(of_type="i"), dtype=np.int64)
    except (TypeError, ValueError):  # not all integers that fit int64
        pass
    try:
        return np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):  # not all numbers
        return None


@functools.lru_cache(maxsize=16)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a regular JSON array of ``shape`` (every size ≥ 1)."""
    text = b"[" + b"," * (shape[-1] - 1) + b"]"
    for size in reversed(shape[:-1]):
        text = b"[" + b",".join([text] * size) + b"]"
    return text

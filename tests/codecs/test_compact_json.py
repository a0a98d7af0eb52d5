"""Compact JSON for the hot paths: orjson's text, the standard library's where orjson refuses."""

from __future__ import annotations

import json

from flaskmodel.codecs import compact_json


def test_compact_text_with_and_without_newline() -> None:
    body = {"b": [1, 2.5, "é"], "a": None}
    assert json.loads(compact_json.dumps(body)) == body
    assert compact_json.dumps(body).startswith(b'{"b":[1,2.5,')  # built order, no spaces
    assert compact_json.dumps(body, newline=True) == compact_json.dumps(body) + b"\n"


def test_an_integer_past_64_bits_keeps_its_value() -> None:
    body = {"id": 2**70}
    assert compact_json.dumps(body) == b'{"id":1180591620717411303424}'
    assert compact_json.dumps(body, newline=True).endswith(b"}\n")

"""``parse_json``: orjson where it agrees with the json module, the json module's answer (and
400s) everywhere else."""

from __future__ import annotations

import json
import math

import pytest

from flaskmodel.errors import InvalidRequest
from flaskmodel.web.body import parse_json


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": [1, 2.5, -3e-7, null, true, "x\\u00e9"], "b": {"c": {}}}',
        b'{"big": 18446744073709551616, "neg": -9223372036854775809}',  # past 64 bits: exact
        b'{"ttl": 821280895527682586265560895455232}',
        '{"model": "tiny"}'.encode("utf-16"),  # the json module detects UTF-16, as it always did
        b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte order mark, likewise
        b'"\\ud800"',  # a lone surrogate, likewise
        b"  [1, 2]\n",
    ],
)
def test_values_are_those_of_the_json_module(raw: bytes) -> None:
    got = parse_json(raw)
    assert got == json.loads(raw)
    assert json.dumps(got) == json.dumps(json.loads(raw))  # types too (int stays int)


def test_a_number_past_double_range_is_infinity_as_before() -> None:
    assert parse_json(b"[1e400]") == [math.inf]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "request body is empty; expected JSON"),
        (b" \n ", "request body is empty; expected JSON"),
        (b"{", "malformed JSON body: Expecting property name enclosed in double quotes"),
        (b"[1,2", "malformed JSON body: Expecting ',' delimiter (line 1 column 5)"),
        (b'{\n "a": nul}', "malformed JSON body: Expecting value (line 2 column 7)"),
        (b"[NaN]", "malformed JSON body: NaN is not a valid JSON number"),
        (b"[-Infinity]", "malformed JSON body: -Infinity is not a valid JSON number"),
        (b"[" * 5000 + b"]" * 5000, "malformed JSON body: nested too deeply"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "malformed JSON body: nested too deeply"),
        (b'{"model": "\xff\xfe\xfd"}', "malformed JSON body: not UTF-8"),
        (b"[" + b"9" * 5000 + b"]", "malformed JSON body: Exceeds the limit"),
        (b"[1]\x00garbage", "malformed JSON body: Extra data (line 1 column 4)"),
    ],
)
def test_errors_are_400s_naming_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_json(raw)
    assert str(caught.value).startswith(message), str(caught.value)

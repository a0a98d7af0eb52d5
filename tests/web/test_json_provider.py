"""The app's JSON responses (orjson) read as the standard provider's did."""

from __future__ import annotations

import datetime
import decimal
import json
import math

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from flaskmodel.web.json_provider import FastJSONProvider

VALUES = [
    {"b": 1, "a": [0.1, 1e-7, -2.5e300, 3], "text": "naïve ☃", "none": None, "ok": True},
    {"when": datetime.datetime(2026, 11, 26, 3, 4, 5), "price": decimal.Decimal("1.25")},
    {"big": 2**70, "small": -(2**63)},
]


def test_answers_read_as_the_standard_providers() -> None:
    app = Flask("t")
    fast, standard = FastJSONProvider(app), DefaultJSONProvider(app)
    standard.sort_keys = False
    for value in VALUES:
        with app.app_context():
            body = fast.response(value).get_data()
            reference = standard.response(value).get_data()
        assert body.endswith(b"\n")
        assert json.loads(body) == json.loads(reference)
        assert list(json.loads(body)) == list(value)  # keys in the order they were built
        assert json.loads(fast.dumps(value)) == json.loads(standard.dumps(value))


def test_nan_is_written_as_null_not_as_invalid_json() -> None:
    app = Flask("t")
    with app.app_context():
        body = FastJSONProvider(app).response({"y": [math.nan, 1.0]}).get_data()
    assert json.loads(body, parse_constant=lambda name: name) == {"y": [None, 1.0]}

"""Request bodies for each benchmark scenario, and the check that a server's answer is right.

``scenarios`` are FlaskModel's three protocols for both models; ``baseline_scenarios`` are what
the naive Flask baseline (``bench.baseline``) is driven with: M1 in TF Serving REST JSON, M2 as a
raw float32 body.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Direct connections only: a configured HTTP proxy must not see requests to our own loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    path: str
    body: Path
    items: int  # examples per request
    content_type: str = "application/json"
    header_length: int | None = None


def _input(model: str, items: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    shape = (items, 32) if model == "tiny" else (items, 256, 256, 1)
    return rng.random(shape, dtype=np.float32)


def scenarios(work: Path, items: int = 1) -> list[Scenario]:
    """TF Serving REST JSON, V2 JSON and V2 binary for both models."""
    out = []
    for model in ("tiny", "ct"):
        x = _input(model, items)
        name = "x" if model == "tiny" else "image"
        rest = work / f"{model}-rest.json"
        rest.write_text(json.dumps({"instances": x.tolist()}))
        out.append(
            Scenario("TF Serving REST JSON", model, f"/v1/models/{model}:predict", rest, items)
        )
        v2 = work / f"{model}-v2.json"
        tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32"}
        v2.write_text(json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}))
        out.append(Scenario("V2 JSON", model, f"/v2/models/{model}/infer", v2, items))
        blob = x.astype("<f4").tobytes()
        header = json.dumps(
            {
                "inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        binary = work / f"{model}-v2.bin"
        binary.write_bytes(header + blob)
        out.append(
            Scenario(
                "V2 binary",
                model,
                f"/v2/models/{model}/infer",
                binary,
                items,
                content_type="application/octet-stream",
                header_length=len(header),
            )
        )
    return out


#: The naive baseline's scenarios (``Scenario.name``), by the model they are measured with.
BASELINE_JSON = "naive Flask, TF Serving REST JSON"
BASELINE_RAW = "naive Flask, raw float32 body"
BASELINE_SCENARIO = {"tiny": BASELINE_JSON, "ct": BASELINE_RAW}


def baseline_scenarios(work: Path, items: int = 1) -> list[Scenario]:
    """M1 ``tiny`` as TF Serving REST JSON and M2 ``ct`` as a raw little-endian float32 body."""
    rest = work / "tiny-baseline.json"
    rest.write_text(json.dumps({"instances": _input("tiny", items).tolist()}))
    raw = work / "ct-raw.bin"
    raw.write_bytes(_input("ct", items).astype("<f4").tobytes())
    return [
        Scenario(BASELINE_JSON, "tiny", "/v1/models/tiny:predict", rest, items),
        Scenario(
            BASELINE_RAW, "ct", "/raw/ct", raw, items, content_type="application/octet-stream"
        ),
    ]


def expected(models_root: Path, model: str, items: int) -> np.ndarray:
    """What the model itself answers for the scenario's input."""
    from flaskmodel.runtime.savedmodel import SavedModelRuntime  # noqa: PLC0415

    runtime = SavedModelRuntime(model, 1, models_root / model / "1")
    runtime.load()
    name = runtime.spec.inputs[0].name
    return np.asarray(next(iter(runtime.predict({name: _input(model, items)}).values())))


def post(
    base: str, scenario: Scenario, headers: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, dict[str, str], bytes]:
    """POST the scenario's body once: the status, the answer's header fields (names in lower
    case) and its body; an error status is returned, not raised."""
    sent = {"Content-Type": scenario.content_type, **(headers or {})}
    if scenario.header_length is not None:
        sent["Inference-Header-Content-Length"] = str(scenario.header_length)
    request = urllib.request.Request(
        base + scenario.path, data=scenario.body.read_bytes(), headers=sent, method="POST"
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, _fields(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, _fields(exc.headers.items()), exc.read()


def answers(url: str, timeout: float = 5) -> bool:
    """Whether a GET of ``url`` answers 200 now (a server still starting does not)."""
    try:
        with _opener.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _fields(items: list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def answer(base: str, scenario: Scenario, headers: dict[str, str] | None = None) -> np.ndarray:
    """POST the scenario's body once and decode the output tensor from the answer."""
    status, fields, raw = post(base, scenario, headers)
    if status != 200:
        raise RuntimeError(f"{scenario.name} {scenario.model}: HTTP {status}: {raw[:300]!r}")
    length = fields.get("inference-header-content-length")
    if length is not None:
        header = json.loads(raw[: int(length)])
        output = header["outputs"][0]
        data = np.frombuffer(raw[int(length) :][: output["parameters"]["binary_data_size"]], "<f4")
        return data.reshape(output["shape"])
    if fields.get("content-type", "").startswith("application/octet-stream"):
        return np.frombuffer(raw, "<f4").reshape(scenario.items, -1)
    body: dict[str, Any] = json.loads(raw)
    if "predictions" in body:
        return np.asarray(body["predictions"], dtype=np.float32)
    output = body["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def job_body(work: Path) -> Path:
    path = work / "tiny-job.json"
    path.write_text(json.dumps({"model": "tiny", "inputs": _input("tiny", 1).tolist()}))
    return path

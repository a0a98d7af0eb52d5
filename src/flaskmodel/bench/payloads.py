"""Request bodies for each benchmark scenario, and the check that a server's answer is right."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


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


def expected(models_root: Path, model: str, items: int) -> np.ndarray:
    """What the model itself answers for the scenario's input."""
    from flaskmodel.runtime.savedmodel import SavedModelRuntime  # noqa: PLC0415

    runtime = SavedModelRuntime(model, 1, models_root / model / "1")
    runtime.load()
    name = runtime.spec.inputs[0].name
    return np.asarray(next(iter(runtime.predict({name: _input(model, items)}).values())))


def answer(base: str, scenario: Scenario) -> np.ndarray:
    """POST the scenario's body once and decode the output tensor from the answer."""
    headers = {"Content-Type": scenario.content_type}
    if scenario.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(scenario.header_length)
    request = urllib.request.Request(
        base + scenario.path, data=scenario.body.read_bytes(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
        length = response.headers.get("Inference-Header-Content-Length")
    if length is not None:
        header = json.loads(raw[: int(length)])
        output = header["outputs"][0]
        data = np.frombuffer(raw[int(length) :][: output["parameters"]["binary_data_size"]], "<f4")
        return data.reshape(output["shape"])
    body: dict[str, Any] = json.loads(raw)
    if "predictions" in body:
        return np.asarray(body["predictions"], dtype=np.float32)
    output = body["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def job_body(work: Path) -> Path:
    path = work / "tiny-job.json"
    path.write_text(json.dumps({"model": "tiny", "inputs": _input("tiny", 1).tolist()}))
    return path

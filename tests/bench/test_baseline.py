"""The naive Flask baseline, for real: gunicorn sync workers serving SavedModels built here."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from flaskmodel.bench.baseline import Baseline, start_baseline
from flaskmodel.bench.models import build_bench_ct
from flaskmodel.bench.payloads import Scenario, answer, baseline_scenarios, expected, post
from flaskmodel.demo.models import build_tiny
from flaskmodel.runtime.savedmodel import SavedModelRuntime


@dataclass
class Served:
    baseline: Baseline
    models_root: Path
    work: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("models")
    build_tiny(root)
    build_bench_ct(root, size=32)
    work = tmp_path_factory.mktemp("work")
    baseline = start_baseline(root, work, workers=2)
    yield Served(baseline, root, work)
    baseline.stop()


def model_output(root: Path, model: str, x: np.ndarray) -> np.ndarray:
    runtime = SavedModelRuntime(model, 1, root / model / "1")
    runtime.load()
    name = runtime.spec.inputs[0].name
    return np.asarray(next(iter(runtime.predict({name: x}).values())))


def test_every_worker_loaded_the_models_before_start_returned(served: Served) -> None:
    assert len(list((served.work / "baseline-ready").iterdir())) == 2
    assert served.baseline.process.poll() is None


def test_predict_answers_tf_serving_rest_json_with_the_models_output(served: Served) -> None:
    scenario = baseline_scenarios(served.work)[0]
    assert scenario.path == "/v1/models/tiny:predict"
    got = answer(served.baseline.base, scenario)
    np.testing.assert_allclose(got, expected(served.models_root, "tiny", 1), rtol=1e-5)

    x = np.random.default_rng(3).random((3, 32), dtype=np.float32)
    body = served.work / "three.json"
    body.write_text(json.dumps({"instances": x.tolist()}))
    three = Scenario("three", "tiny", "/v1/models/tiny:predict", body, 3)
    got = answer(served.baseline.base, three)
    np.testing.assert_allclose(got, model_output(served.models_root, "tiny", x), rtol=1e-5)


def test_raw_answers_the_models_output_as_float32_bytes(served: Served) -> None:
    x = np.random.default_rng(4).random((2, 32, 32, 1), dtype=np.float32)
    body = served.work / "ct.bin"
    body.write_bytes(x.astype("<f4").tobytes())
    raw = Scenario("raw", "ct", "/raw/ct", body, 2, content_type="application/octet-stream")
    got = answer(served.baseline.base, raw)
    np.testing.assert_allclose(got, model_output(served.models_root, "ct", x), rtol=1e-4)


def test_an_unknown_model_is_404(served: Served) -> None:
    body = served.work / "nope.json"
    body.write_text(json.dumps({"instances": [[0.0] * 32]}))
    status, _, _ = post(
        served.baseline.base, Scenario("x", "nope", "/v1/models/nope:predict", body, 1)
    )
    assert status == 404


def test_stop_ends_the_whole_process_group(tmp_path: Path, served: Served) -> None:
    baseline = start_baseline(served.models_root, tmp_path, workers=1)
    baseline.stop()
    assert baseline.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(baseline.process.pid, 0)

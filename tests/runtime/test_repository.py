"""The model repository with real SavedModels and the fake backend."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from flaskmodel.errors import ModelNotFound
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.settings import BatchingSettings
from tests.conftest import FAKE_SPEC, write_fake_model


def test_savedmodel_signature_and_predict(models_root: Path) -> None:
    repository = ModelRepository(models_root)
    assert repository.names() == ["ct_classifier", "echo", "tiny"]
    tiny = repository.get("tiny")
    assert [(t.name, t.dtype, t.shape) for t in tiny.spec.inputs] == [("x", "float32", [None, 32])]
    assert [(t.name, t.shape) for t in tiny.spec.outputs] == [("probabilities", [None, 10])]
    out = tiny.predict({"x": np.ones((4, 32), np.float32)})["probabilities"]
    assert out.shape == (4, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    ct = repository.get("ct_classifier")
    assert ct.spec.inputs[0].shape == [None, 64, 64, 1]
    assert repository.config("ct_classifier").class_names is not None
    adverts = repository.adverts()
    assert adverts["tiny"].latest == 1 and adverts["tiny"].specs[1] == tiny.spec
    repository.close()


def test_versions_and_rescan(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_fake_model(root, "m", 1, FAKE_SPEC)
    write_fake_model(root, "m", 3, FAKE_SPEC)
    (root / "m" / "2").mkdir()  # no model inside: not a version
    repository = ModelRepository(root, backend="fake", rescan_seconds=0)
    assert repository.versions("m") == [1, 3]
    assert repository.get("m").spec.version == 3
    assert repository.get("m", 1).spec.version == 1
    with pytest.raises(ModelNotFound, match="no version 2"):
        repository.get("m", 2)
    write_fake_model(root, "m", 4, FAKE_SPEC)
    repository.refresh()
    repository.future("m", 4).result(timeout=10)
    assert repository.get("m").spec.version == 4
    shutil.rmtree(root / "m")
    with pytest.raises(ModelNotFound):
        repository.get("m")


def test_batch_threads_come_from_the_settings_or_the_models_file(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_fake_model(root, "a", 1, FAKE_SPEC)
    write_fake_model(root, "b", 1, FAKE_SPEC)
    (root / "b" / "flaskmodel.json").write_text(json.dumps({"batch_threads": 1}))
    defaults = ModelRepository(root, backend="fake", batching=BatchingSettings())
    assert [defaults.get(n).batch_threads for n in ("a", "b")] == [2, 1]  # 2: the default
    three = ModelRepository(root, backend="fake", batching=BatchingSettings(batch_threads=3))
    assert [three.get(n).batch_threads for n in ("a", "b")] == [3, 1]
    defaults.close()
    three.close()


def test_bad_model_is_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_fake_model(root, "good", 1, FAKE_SPEC)
    write_fake_model(root, "bad", 1, FAKE_SPEC)
    (root / "bad" / "1" / "fake.json").write_text("{broken")
    repository = ModelRepository(root, backend="fake")
    errors = repository.load_all()
    assert list(errors) == ["bad"]
    assert list(repository.adverts()) == ["good"]


def test_only_restricts_the_served_models(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_fake_model(root, "a", 1, FAKE_SPEC)
    write_fake_model(root, "b", 1, FAKE_SPEC)
    assert ModelRepository(root, backend="fake").names() == ["a", "b"]
    assert ModelRepository(root, backend="fake", only=["b"]).names() == ["b"]
    # A worker that found no model at start serves none, even if one appears later.
    assert ModelRepository(root, backend="fake", only=[]).names() == []


def drop_version(root: Path, name: str, version: int, spec: dict[str, object]) -> None:
    """Write a version beside the model and move it in at once (as a deployment should)."""
    staged = write_fake_model(root / ".staging", name, version, spec)
    staged.rename(root / name / str(version))


def test_new_versions_load_in_the_background_and_gone_ones_end(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_fake_model(root, "m", 1, FAKE_SPEC)
    repository = ModelRepository(root, backend="fake", rescan_seconds=0)
    assert repository.load_all() == {}
    drop_version(root, "m", 2, {**FAKE_SPEC, "load_delay_ms": 800})
    started = time.monotonic()
    repository.refresh()
    assert time.monotonic() - started < 0.5  # the load runs in its own thread
    assert repository.adverts()["m"].states == {1: "AVAILABLE", 2: "LOADING"}
    assert repository.adverts()["m"].versions == [1]
    assert repository.get("m").spec.version == 1  # the default until version 2 is warm
    assert repository.future("m", 2).result(timeout=10).spec.version == 2
    advert = repository.adverts()["m"]
    assert advert.states == {1: "AVAILABLE", 2: "AVAILABLE"} and advert.latest == 2
    assert repository.get("m").spec.version == 2
    shutil.rmtree(root / "m" / "1")
    repository.refresh()
    advert = repository.adverts()["m"]
    assert advert.states == {1: "END", 2: "AVAILABLE"} and advert.versions == [2]
    with pytest.raises(ModelNotFound):
        repository.get("m", 1)
    repository.close()

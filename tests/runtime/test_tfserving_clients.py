"""Both TF Serving runtimes (gRPC and REST) against the stand-in TF Serving process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flaskmodel.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelNotFound,
    ServiceUnavailable,
)
from flaskmodel.runtime.remote import RemoteRuntime
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.runtime.tfserving_grpc import TfServingGrpcClient, _from_proto, _to_proto
from flaskmodel.runtime.tfserving_rest import TfServingRestClient
from tests import procs
from tests.runtime.conftest import SLOW_MODEL, TfServing
from tests.web.test_predict_v1 import reference

Client = TfServingGrpcClient | TfServingRestClient


def make_client(kind: str, where: str, timeout: float = 10) -> Client:
    if kind == "grpc":
        return TfServingGrpcClient(where, timeout=timeout)
    return TfServingRestClient(where, timeout=timeout)


def make_runtime(client: Client, name: str, version: int) -> RemoteRuntime:
    return client.runtime(name, version)


def target(kind: str, tfserving: TfServing) -> str:
    return tfserving.grpc_target if kind == "grpc" else tfserving.rest_url


@pytest.fixture(params=["grpc", "rest"])
def client(request: pytest.FixtureRequest, tfserving: TfServing) -> Iterator[Client]:
    found = make_client(request.param, target(request.param, tfserving))
    yield found
    found.close()


def test_versions_metadata_and_predict(client: Client, models_root: Path) -> None:
    assert client.versions("tiny") == [1]
    assert client.versions("nope") == []
    runtime = make_runtime(client, "tiny", 1)
    runtime.load()
    local = ModelRepository(models_root).get("tiny").spec
    assert runtime.spec == local  # names, dtypes, shapes and graph tensor names
    for rows in (1, 7):  # one example and a batch
        x = np.random.default_rng(rows).normal(size=(rows, 32)).astype(np.float32)
        got = runtime.predict({"x": x})
        assert got["probabilities"].dtype == np.float32
        assert got["probabilities"].shape == (rows, 10)
        np.testing.assert_allclose(
            got["probabilities"], reference(models_root, "tiny", x=x)["probabilities"], rtol=1e-6
        )


def test_strings_and_several_outputs(client: Client, models_root: Path) -> None:
    runtime = make_runtime(client, "echo", 1)
    runtime.load()
    text = np.array([b"\xff\x00raw", b"text"], dtype=object)
    scale = np.array([[1, 2], [3, 4]], np.float32)
    got = runtime.predict({"text": text, "scale": scale})
    expected = reference(models_root, "echo", text=text, scale=scale)
    assert got["text_bytes"].tolist() == expected["text_bytes"].tolist()
    assert got["length"].dtype == np.int32 and got["length"].tolist() == [5, 4]
    np.testing.assert_array_equal(got["doubled"], expected["doubled"])


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian: sent in TensorFlow's byte order
        np.array([[True, False]]),
        np.arange(4, dtype=np.float16),
        np.arange(4, dtype=np.uint64) << 60,
        np.array(["é", "text"]),  # str arrays travel as UTF-8 bytes
    ],
)
def test_grpc_tensors_round_trip(array: np.ndarray) -> None:
    got = _from_proto("out", _to_proto("in", array))
    expected = np.char.encode(array) if array.dtype.kind == "U" else array
    assert got.shape == expected.shape and got.tolist() == expected.tolist()


def test_grpc_tensors_that_cannot_travel() -> None:
    with pytest.raises(InvalidInput, match="'in'"):
        _to_proto("in", np.array([1, "a"], dtype=object))
    with pytest.raises(InvalidInput, match="datetime64"):
        _to_proto("in", np.array(["2020-01-01"], dtype="datetime64[D]"))
    bad_shape = _to_proto("in", np.arange(6, dtype=np.float32))
    bad_shape.tensor_shape.dim[0].size = 4
    with pytest.raises(InternalError, match="'out'"):
        _from_proto("out", bad_shape)


def test_errors_map_onto_the_error_tree(client: Client) -> None:
    with pytest.raises(ModelNotFound, match="tiny"):
        make_runtime(client, "tiny", 9).load()
    runtime = make_runtime(client, "tiny", 1)
    runtime.load()
    with pytest.raises(InvalidInput):
        runtime.predict({"x": np.zeros((1, 31), np.float32)})
    with pytest.raises(InvalidInput, match="input"):
        runtime.predict({"y": np.zeros((1, 32), np.float32)})


@pytest.mark.parametrize("kind", ["grpc", "rest"])
def test_server_down_is_unavailable(kind: str) -> None:
    where = f"127.0.0.1:{procs.free_port()}"
    gone = make_client(kind, where if kind == "grpc" else f"http://{where}", timeout=2)
    with pytest.raises(ServiceUnavailable, match="TensorFlow Serving") as caught:
        gone.versions("tiny")
    assert caught.value.status == 503
    gone.close()


@pytest.mark.parametrize("kind", ["grpc", "rest"])
def test_deadline(kind: str, tfserving: TfServing) -> None:
    slow = make_client(kind, target(kind, tfserving), timeout=0.5)
    runtime = make_runtime(slow, SLOW_MODEL, 1)
    runtime.load()
    with pytest.raises(DeadlineExceeded) as caught:
        runtime.predict({"x": np.zeros((1, 32), np.float32)})
    assert caught.value.status == 504
    slow.close()


GEVENT_CHECK = """
from gevent import monkey
monkey.patch_all()
import sys, time
import gevent
import numpy as np
from flaskmodel.runtime.tfserving_grpc import TfServingGrpcClient
client = TfServingGrpcClient(sys.argv[1], timeout=10)
runtime = client.runtime(sys.argv[2], 1)
runtime.load()
ticks = []
def tick():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.02)
ticker = gevent.spawn(tick)
calls = [gevent.spawn(runtime.predict, {"x": np.zeros((1, 32), np.float32)}) for _ in range(3)]
started = time.monotonic()
gevent.joinall(calls, raise_error=True)
print(len(ticks), round(time.monotonic() - started, 2))
"""


def test_grpc_under_gevent_does_not_block_the_hub(tfserving: TfServing) -> None:
    """Three 1.5 s calls from greenlets overlap, and another greenlet runs meanwhile."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    done = subprocess.run(
        [sys.executable, "-c", GEVENT_CHECK, tfserving.grpc_target, SLOW_MODEL],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ticks, seconds = done.stdout.split()[-2:]
    assert float(seconds) < 3.0  # concurrent, not 3 × 1.5 s one after the other
    assert int(ticks) >= 20  # the hub kept running other greenlets during the calls

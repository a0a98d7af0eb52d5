"""The stand-in TF Serving (``tfserving_standin``) as a real separate process on free ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import procs

SLOW_MODEL = "tiny_slow"
SLOW_MS = 1500


@dataclass
class TfServing:
    grpc_target: str
    rest_url: str


def model_config(models: dict[str, Path]) -> str:
    """A TF Serving ``--model_config_file`` (text protobuf) serving ``models``."""
    entries = "".join(
        f"  config {{ name: '{name}' base_path: '{path}' model_platform: 'tensorflow' }}\n"
        for name, path in models.items()
    )
    return "model_config_list {\n" + entries + "}\n"


@pytest.fixture(scope="session")
def tfserving(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TfServing]:
    """The stand-in serving ``tiny``, ``echo`` and ``tiny_slow`` (tiny, 1.5 s per predict)."""
    folder = tmp_path_factory.mktemp("tfserving")
    config = folder / "models.config"
    config.write_text(
        model_config(
            {
                "tiny": models_root / "tiny",
                "echo": models_root / "echo",
                SLOW_MODEL: models_root / "tiny",
            }
        )
    )
    port, rest_port = procs.free_port(), procs.free_port()
    args = [
        sys.executable,
        "-m",
        "tests.runtime.tfserving_standin",
        f"--port={port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={config}",
        f"--predict_delay_ms={SLOW_MODEL}={SLOW_MS}",
    ]
    log = folder / "standin.log"
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:
        procs.wait_for(
            lambda: requests.get(f"{rest_url}/v1/models/tiny", timeout=1).ok, 60, "stand-in", proc
        )
    except (RuntimeError, TimeoutError):
        procs.stop(proc)
        raise RuntimeError(
            f"stand-in TF Serving did not start:\n{log.read_text()[-3000:]}"
        ) from None
    yield TfServing(grpc_target=f"127.0.0.1:{port}", rest_url=rest_url)
    procs.stop(proc)

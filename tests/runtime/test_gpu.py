"""The GPU memory policy: applied before models load, harmless on a machine without GPUs.

This machine class has no GPU; the test proves the call order and the no-GPU path in a fresh
process (TensorFlow refuses memory settings once a GPU is initialised, so a real GPU host
checks the same call with `CUDA_VISIBLE_DEVICES=0 FLASKMODEL_RUNTIME__GPU_MEMORY_LIMIT_MB=...`).
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import tensorflow as tf
from flaskmodel.runtime.gpu import configure_gpus
print("gpus", configure_gpus(512), configure_gpus(None))
print("devices", [d.device_type for d in tf.config.list_logical_devices()])
"""


def test_configure_gpus_without_gpus_is_a_no_op() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, timeout=120, check=False
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "gpus [] []" in out
    assert "devices ['CPU']" in out

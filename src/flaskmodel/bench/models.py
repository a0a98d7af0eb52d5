"""The two benchmark models: M1 ``tiny`` (the demo MLP) and M2 ``ct`` (a heavier CNN).

``ct`` is float32 ``[None, 256, 256, 1]`` → ``scores`` ``[None, 12]``: four stages of two 3×3
convolutions + ReLU and a 2×2 max-pool, then global average pooling and a dense softmax — about
20–60 ms a slice on a 2-core CPU, so the model, not the plumbing, is what a good server saturates.
Weights are seeded; nothing is trained or downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from flaskmodel.demo.build import build_demo, write_demo_series
from flaskmodel.demo.models import import_tensorflow, save_module

logger = logging.getLogger(__name__)

CT_BENCH = "ct"
CT_SIZE = 256
CT_STAGES = (48, 64, 96, 128)
CT_CLASSES = 12
SEED = 4242


# The large series the fairness figure runs a small job beside.
FAIRNESS_SERIES_UID = "2.25.90000000000000000000000000000000001"
FAIRNESS_SLICES = 480


def build_bench_ct(models_root: Path, *, size: int = CT_SIZE, version: int = 1) -> Path:
    """Build ``<models_root>/ct/<version>/``; returns the version folder."""
    tf = import_tensorflow()
    rng = np.random.default_rng(SEED)
    module = tf.Module()
    kernels = []
    channels = 1
    for stage, width in enumerate(CT_STAGES):
        for layer in range(2):
            fan_in = 9 * channels
            kernel = rng.normal(0, np.sqrt(2 / fan_in), (3, 3, channels, width)).astype(np.float32)
            kernels.append(tf.Variable(kernel, name=f"conv{stage}_{layer}"))
            channels = width
    module.kernels = kernels
    dense = rng.normal(0, np.sqrt(1 / channels), (channels, CT_CLASSES)).astype(np.float32)
    module.dense = tf.Variable(dense, name="dense")

    def serve(image: Any) -> dict[str, Any]:
        x = image
        for index, kernel in enumerate(module.kernels):
            x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"))
            if index % 2 == 1:
                x = tf.nn.max_pool2d(x, 2, 2, padding="VALID")
        pooled = tf.reduce_mean(x, axis=[1, 2])
        return {"scores": tf.nn.softmax(tf.matmul(pooled, module.dense), axis=-1)}

    spec = tf.TensorSpec([None, size, size, 1], tf.float32, name="image")
    module.serve = tf.function(serve, input_signature=[spec])
    target = models_root / CT_BENCH / str(version)
    save_module(tf, module, module.serve.get_concrete_function(), target)
    logger.info("built benchmark model %s at %s", CT_BENCH, target)
    return target


def build_bench_models(models_root: Path, data_root: Path) -> list[str]:
    """M1, M2 and the demo CT model and series, unless present; lines saying what was done."""
    lines = build_demo(models_root, data_root)
    if not (models_root / CT_BENCH / "1" / "saved_model.pb").is_file():
        build_bench_ct(models_root)
        lines.append(f"{CT_BENCH}: built")
    if not (data_root / FAIRNESS_SERIES_UID).is_dir():
        write_demo_series(
            data_root, n_slices=FAIRNESS_SLICES, size=128, series_uid=FAIRNESS_SERIES_UID
        )
        lines.append(f"fairness series {FAIRNESS_SERIES_UID}: {FAIRNESS_SLICES} slices written")
    return lines

"""The demo SavedModels: a CT body-region slice classifier and a tiny MLP, built offline.

Both are plain ``tf.Module`` objects whose weights are ``tf.Variable``s drawn from a seeded numpy
generator, exported with ``tf.saved_model.save`` and one ``serving_default`` signature:

* ``ct_classifier``: ``image`` float32 ``[None, H, W, 1]`` (soft-tissue windowed HU scaled to
  [0, 1]) → ``scores`` float32 ``[None, 12]`` (softmax over ``REGION_NAMES``). Four 3×3 conv +
  ReLU + 2×2 max-pool stages, global average and max pooling, one dense layer. The conv weights are
  random; the dense layer is fitted (seeded, closed loop, no data download) to renderings of the
  demo phantom, so the demo series gets a sensible head-to-feet sequence of regions. Its training
  renderings go through the TensorFlow resize that its ``flaskmodel.json`` names
  (``preprocess.resize``, ``DEFAULT_RESIZE``), the one the worker reproduces when serving.
* ``tiny``: ``x`` float32 ``[None, 32]`` → ``probabilities`` float32 ``[None, 10]``.

Every build goes into a hidden temporary folder renamed into ``<models_root>/<model>/<version>/``,
after ``flaskmodel.json`` is in place, so a model repository never sees a half-written version.
TensorFlow is imported inside the functions only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from flaskmodel.demo.series import (
    REGION_NAMES,
    render_phantom,
    swap_into_place,
    window_unit,
)
from flaskmodel.dicom.preprocess import DEFAULT_RESIZE, TF_RESIZE_ARGS, ResizeMethod

logger = logging.getLogger(__name__)

CT_MODEL = "ct_classifier"
TINY_MODEL = "tiny"
CONFIG_FILE = "flaskmodel.json"
CT_SEED = 20240101
TINY_SEED = 7
#: Output channels of the four conv stages of ``ct_classifier``.
CT_CHANNELS = (16, 32, 48, 64)
TINY_HIDDEN = 64

_Array = npt.NDArray[np.float32]
# Phantom renderings per region used to fit the dense layer, and the phantom sizes they are drawn
# at (before resizing to the model's input size) so the fit covers resampled series too.
_FIT_SAMPLES_PER_REGION = 8
_FIT_RENDER_SIZES = (64, 128)
_FIT_STEPS = 1500
_FIT_RATE = 0.5
_FIT_L2 = 1e-3


def import_tensorflow() -> Any:
    """``tensorflow``, imported with its C++ logging quietened unless the caller chose a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # noqa: PLC0415 - heavy import kept out of module import

    return tf


def _he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> _Array:
    out: _Array = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def _ct_conv_weights(seed: int) -> list[tuple[_Array, _Array]]:
    rng = np.random.default_rng(seed)
    weights = []
    channels_in = 1
    for channels_out in CT_CHANNELS:
        kernel = _he_normal(rng, (3, 3, channels_in, channels_out), 9 * channels_in)
        weights.append((kernel, np.zeros(channels_out, dtype=np.float32)))
        channels_in = channels_out
    return weights


def _ct_features(tf: Any, convs: list[tuple[Any, Any]], image: Any) -> Any:
    """``[N, 2 * CT_CHANNELS[-1]]``: global average and max of the last conv stage."""
    x = image
    for kernel, bias in convs:
        x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME") + bias)
        x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
    return tf.concat([tf.reduce_mean(x, axis=[1, 2]), tf.reduce_max(x, axis=[1, 2])], axis=1)


def _fit_images(tf: Any, size: int, method: ResizeMethod) -> tuple[_Array, npt.NDArray[np.int64]]:
    """Windowed phantom slices resized to ``size``² by ``method``'s TF call, with region labels.

    Every rendering goes through ``tf.image.resize(**TF_RESIZE_ARGS[method])``, those already at
    ``size`` too (the identity for every method), so training sees exactly what serving computes.
    """
    batches, labels = [], []
    n_regions = len(REGION_NAMES)
    for render_size in (*_FIT_RENDER_SIZES, size):
        images = []
        for region in range(n_regions):
            for k in range(_FIT_SAMPLES_PER_REGION):
                t = (region + (k + 0.5) / _FIT_SAMPLES_PER_REGION) / n_regions
                seed = render_size * 1000 + region * _FIT_SAMPLES_PER_REGION + k
                images.append(window_unit(render_phantom(t, render_size, noise_seed=seed)))
                labels.append(region)
        stacked = np.stack(images)[..., None]
        batches.append(tf.image.resize(stacked, (size, size), **TF_RESIZE_ARGS[method]).numpy())
    return np.concatenate(batches).astype(np.float32), np.asarray(labels, dtype=np.int64)


def _fit_softmax(
    features: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], n_classes: int
) -> tuple[_Array, _Array]:
    """Multinomial logistic regression by full-batch gradient descent (deterministic).

    Features are standardised for the fit; the scaling is folded back into the returned weights.
    """
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    z = (features - mean) / scale
    onehot = np.eye(n_classes)[labels]
    weights = np.zeros((z.shape[1], n_classes))
    bias = np.zeros(n_classes)
    for _ in range(_FIT_STEPS):
        logits = z @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        grad = (probs - onehot) / len(z)
        weights -= _FIT_RATE * (z.T @ grad + _FIT_L2 * weights)
        bias -= _FIT_RATE * grad.sum(axis=0)
    folded = weights / scale[:, None]
    return folded.astype(np.float32), (bias - mean @ folded).astype(np.float32)


def save_module(tf: Any, module: Any, signature: Any, target: Path) -> None:
    """Save ``module`` with ``signature`` as serving_default into ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": signature})
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CONFIG_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, folder / CONFIG_FILE)


def ct_config(size: int) -> dict[str, Any]:
    """The ``flaskmodel.json`` of ``ct_classifier`` at input size ``size``²."""
    return {
        "class_names": list(REGION_NAMES),
        "preprocess": {
            "input_size": [size, size],
            "window": "soft_tissue",
            "normalise": "unit",
            "resize": DEFAULT_RESIZE,
        },
        "postprocess": "monotonic",
        "batch_size": 16,
    }


def build_ct_classifier(models_root: Path, size: int = 256, version: int = 1) -> Path:
    """Build ``<models_root>/ct_classifier/<version>/`` (and its ``flaskmodel.json``).

    Input ``image`` float32 ``[None, size, size, 1]``, output ``scores`` float32 ``[None, 12]``.
    An existing version folder is replaced. Returns the version folder.
    """
    if size < 16:
        raise ValueError(f"ct_classifier input size must be at least 16, got {size}")
    tf = import_tensorflow()
    convs = [(tf.constant(k), tf.constant(b)) for k, b in _ct_conv_weights(CT_SEED)]
    config = ct_config(size)
    images, labels = _fit_images(tf, size, config["preprocess"]["resize"])
    features = np.concatenate(
        [_ct_features(tf, convs, images[i : i + 64]).numpy() for i in range(0, len(images), 64)]
    ).astype(np.float64)
    dense_w, dense_b = _fit_softmax(features, labels, len(REGION_NAMES))

    module = tf.Module()
    module.convs = [
        (tf.Variable(k, name=f"conv{i}_kernel"), tf.Variable(b, name=f"conv{i}_bias"))
        for i, (k, b) in enumerate(_ct_conv_weights(CT_SEED), start=1)
    ]
    module.dense = (
        tf.Variable(dense_w, name="dense_kernel"),
        tf.Variable(dense_b, name="dense_bias"),
    )

    def serve(image: Any) -> dict[str, Any]:
        logits = tf.matmul(_ct_features(tf, module.convs, image), module.dense[0]) + module.dense[1]
        return {"scores": tf.nn.softmax(logits, axis=-1)}

    spec = tf.TensorSpec([None, size, size, 1], tf.float32, name="image")
    module.serve = tf.function(serve, input_signature=[spec])
    folder = models_root / CT_MODEL
    _write_config(folder, config)
    target = folder / str(version)
    save_module(tf, module, module.serve.get_concrete_function(), target)
    logger.info("built %s (%dx%d input) at %s", CT_MODEL, size, size, target)
    return target


def build_tiny(models_root: Path, version: int = 1) -> Path:
    """Build ``<models_root>/tiny/<version>/``: ``x`` [None, 32] → ``probabilities`` [None, 10].

    A seeded two-layer MLP (32 → 64 ReLU → 10 softmax). Also writes a minimal ``flaskmodel.json``
    with class names ``"0"``..``"9"``. An existing version folder is replaced.
    """
    tf = import_tensorflow()
    rng = np.random.default_rng(TINY_SEED)
    module = tf.Module()
    module.hidden = (
        tf.Variable(_he_normal(rng, (32, TINY_HIDDEN), 32), name="hidden_kernel"),
        tf.Variable(np.zeros(TINY_HIDDEN, dtype=np.float32), name="hidden_bias"),
    )
    module.out = (
        tf.Variable(_he_normal(rng, (TINY_HIDDEN, 10), TINY_HIDDEN), name="output_kernel"),
        tf.Variable(np.zeros(10, dtype=np.float32), name="output_bias"),
    )

    def serve(x: Any) -> dict[str, Any]:
        hidden = tf.nn.relu(tf.matmul(x, module.hidden[0]) + module.hidden[1])
        logits = tf.matmul(hidden, module.out[0]) + module.out[1]
        return {"probabilities": tf.nn.softmax(logits, axis=-1)}

    module.serve = tf.function(
        serve, input_signature=[tf.TensorSpec([None, 32], tf.float32, name="x")]
    )
    folder = models_root / TINY_MODEL
    _write_config(folder, {"class_names": [str(i) for i in range(10)]})
    target = folder / str(version)
    save_module(tf, module, module.serve.get_concrete_function(), target)
    logger.info("built %s at %s", TINY_MODEL, target)
    return target

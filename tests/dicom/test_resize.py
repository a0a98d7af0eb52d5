"""flaskmodel.dicom.preprocess resizing against TensorFlow, and the ``preprocess.resize`` setting.

TensorFlow is the reference: imported by these tests only, never by the code under test. The
served resize must equal the TF call the model was trained with to float32 precision.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from flaskmodel.demo.models import ct_config
from flaskmodel.dicom.headers import SliceRef
from flaskmodel.dicom.pixels import load_hu
from flaskmodel.dicom.preprocess import (
    DEFAULT_RESIZE,
    RESIZE_METHODS,
    TF_RESIZE_ARGS,
    WINDOW_PRESETS,
    PreprocessConfig,
    ResizeMethod,
    apply_window,
    preprocess_slice,
    resize,
    resize_weights,
)
from flaskmodel.errors import InvalidRequest
from flaskmodel.runtime.repository import ModelRepository

from .conftest import Samples

# (source (rows, columns), target (height, width)): shrinks by 2 to 8, an enlargement, non-square.
SIZE_PAIRS = [
    ((512, 512), (224, 224)),
    ((512, 512), (64, 64)),
    ((100, 100), (37, 37)),
    ((8, 8), (4, 4)),
    ((30, 30), (64, 64)),
    ((512, 400), (224, 224)),
]


@pytest.fixture(scope="module")
def tf() -> Any:
    """TensorFlow, the reference: imported by these tests only, never by flaskmodel.dicom."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: PLC0415

    return tensorflow


@pytest.fixture(scope="module")
def chest_hu(samples: Samples) -> np.ndarray:
    """A real 512×512 chest slice in HU (-1024 .. 1341)."""
    ref = SliceRef(
        path=samples.root / samples.j2k / "1-15.dcm",
        sop_instance_uid="1.2.3",
        instance_number=None,
        position=None,
        z=0.0,
        series_instance_uid="1.2.3.4",
    )
    return load_hu(ref, samples.root)


def tf_resize(tf: Any, image: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """The TensorFlow call each method names, spelled out here independently of the code."""
    batch = image[np.newaxis, ..., np.newaxis]
    if method == "tf_bilinear":
        out = tf.image.resize(batch, size, "bilinear", antialias=False)
    elif method == "tf_area":
        out = tf.image.resize(batch, size, "area")
    else:
        assert method == "antialias"
        out = tf.image.resize(batch, size, "bilinear", antialias=True)
    return np.asarray(out.numpy()[0, ..., 0])


def assert_matches_tf(ours: np.ndarray, reference: np.ndarray, source: np.ndarray) -> None:
    """Equal to float32 precision. Both sides form the same convex combinations in float32, in
    two passes and different summation orders: a few units of float32 epsilon (1.2e-7) of the
    value range apart (measured: at most 3e-7 of it). 1e-5 of the range leaves a 30x margin and is
    still 100x below the smallest difference between any two methods or the old kernel on these
    images (1.2e-3 of the range, area vs old at 512 → 37)."""
    assert ours.dtype == np.float32
    assert ours.shape == reference.shape
    value_range = float(source.max() - source.min())
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5 * value_range)


@pytest.mark.parametrize("method", RESIZE_METHODS)
@pytest.mark.parametrize(("shape", "size"), SIZE_PAIRS)
@pytest.mark.parametrize("kind", ["random", "slice"])
def test_resize_matches_tensorflow(
    tf: Any,
    chest_hu: np.ndarray,
    method: ResizeMethod,
    shape: tuple[int, int],
    size: tuple[int, int],
    kind: str,
) -> None:
    if kind == "random":
        source = np.random.default_rng(sum(shape + size)).random(shape, dtype=np.float32)
    else:
        # A piece of the real slice around its centre (the whole of it at 512×512).
        top, left = (512 - shape[0]) // 2, (512 - shape[1]) // 2
        source = chest_hu[top : top + shape[0], left : left + shape[1]]

    reference = tf_resize(tf, source, size, method)
    assert_matches_tf(resize(source, size, method), reference, source)
    # The demo model's training calls TensorFlow through TF_RESIZE_ARGS: the same call.
    via_table = tf.image.resize(source[..., np.newaxis], size, **TF_RESIZE_ARGS[method])
    np.testing.assert_array_equal(via_table.numpy()[..., 0], reference)


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_preprocess_slice_resizes_with_the_configured_method(
    tf: Any, chest_hu: np.ndarray, method: ResizeMethod
) -> None:
    config = PreprocessConfig(input_size=(224, 224), window="lung", resize=method)
    windowed = apply_window(chest_hu, WINDOW_PRESETS["lung"])

    out = preprocess_slice(chest_hu, config)

    assert out.shape == (224, 224, 1)
    assert_matches_tf(out[..., 0], tf_resize(tf, windowed, (224, 224), method), windowed)


#: The documented 8 → 4 weights: TensorFlow's default 0/.5/.5/0 (area the same at exactly 2x),
#: its antialiased triangle .125/.375/.375/.125 inside and truncated, renormalised 3/7, 3/7, 1/7 at
#: the edges. (The old kernel here gave .0625/.4375/.4375/.0625, matching no library.)
_PAIRS = np.kron(np.eye(4), [0.5, 0.5])
_TRIANGLE = np.array(
    [
        [3 / 7, 3 / 7, 1 / 7, 0, 0, 0, 0, 0],
        [0, 0.125, 0.375, 0.375, 0.125, 0, 0, 0],
        [0, 0, 0, 0.125, 0.375, 0.375, 0.125, 0],
        [0, 0, 0, 0, 0, 1 / 7, 3 / 7, 3 / 7],
    ]
)
EIGHT_TO_FOUR = {"tf_bilinear": _PAIRS, "tf_area": _PAIRS, "antialias": _TRIANGLE}


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_eight_to_four_weights_are_the_documented_ones(tf: Any, method: ResizeMethod) -> None:
    weights = resize_weights(8, 4, method)
    # Resizing the 8×8 identity along its rows alone gives TensorFlow's own weight matrix.
    tf_weights = tf_resize(tf, np.eye(8, dtype=np.float32), (4, 8), method)

    np.testing.assert_allclose(weights, EIGHT_TO_FOUR[method], atol=1e-7)
    np.testing.assert_allclose(tf_weights, EIGHT_TO_FOUR[method], atol=1e-7)


def test_area_and_bilinear_part_when_the_factor_is_not_two() -> None:
    # 3 → 2: area weighs covered length (2/3, 1/3), bilinear samples at 0.25 (3/4, 1/4).
    np.testing.assert_allclose(resize_weights(3, 2, "tf_area")[0], [2 / 3, 1 / 3, 0], atol=1e-7)
    np.testing.assert_allclose(resize_weights(3, 2, "tf_bilinear")[0], [0.75, 0.25, 0], atol=1e-7)


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_weights_are_cached_read_only_float32(method: ResizeMethod) -> None:
    weights = resize_weights(512, 224, method)
    assert weights is resize_weights(512, 224, method)
    assert weights.dtype == np.float32 and weights.shape == (224, 512)
    assert not weights.flags.writeable
    # Area boxes end where TensorFlow's float32 products put them, so its rows (like TF's) sum to
    # the box's rounded length over the exact one: 1 to within 1e-5 at 512.
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5 if method == "tf_area" else 1e-6)


def test_unknown_method_names_the_allowed_ones() -> None:
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="tf_bilinear, tf_area, antialias"):
        resize(image, (4, 4), "bicubic")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown resize method 'bicubic'; use one of"):
        PreprocessConfig.model_validate({"resize": "bicubic"})


def test_default_is_the_demo_models_training_resize() -> None:
    assert PreprocessConfig().resize == DEFAULT_RESIZE == "tf_bilinear"
    demo = PreprocessConfig.model_validate(ct_config(64)["preprocess"])
    assert demo.resize == DEFAULT_RESIZE
    assert TF_RESIZE_ARGS[DEFAULT_RESIZE] == {"method": "bilinear", "antialias": False}


def test_model_json_resize_is_read_and_checked(tmp_path: Path) -> None:
    for name, preprocess in (
        ("area", {"resize": "tf_area"}),
        ("plain", {}),
        ("typo", {"resize": "antialiased"}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "flaskmodel.json").write_text(json.dumps({"preprocess": preprocess}))
    repository = ModelRepository(tmp_path)

    assert repository.config("area").preprocess.resize == "tf_area"
    assert repository.config("plain").preprocess.resize == "tf_bilinear"
    with pytest.raises(InvalidRequest) as caught:
        repository.config("typo")
    message = str(caught.value)
    assert "model 'typo': bad flaskmodel.json" in message
    assert "unknown resize method 'antialiased'; use one of tf_bilinear, tf_area, antialias" in (
        message
    )


@pytest.mark.parametrize("method", RESIZE_METHODS)
@pytest.mark.parametrize(
    ("shape", "size"), [((512, 512), (256, 256)), ((3, 5), (7, 2)), ((100, 40), (224, 224))]
)
def test_resize_shapes(method: ResizeMethod, shape: tuple[int, int], size: tuple[int, int]) -> None:
    out = resize(np.random.default_rng(0).random(shape), size, method)
    assert out.shape == size
    assert out.dtype == np.float32
    assert out.flags.c_contiguous


@pytest.mark.parametrize("method", RESIZE_METHODS)
@pytest.mark.parametrize("size", [(256, 256), (512, 700), (37, 91), (5, 5)])
def test_resize_keeps_a_constant_image_constant(
    method: ResizeMethod, size: tuple[int, int]
) -> None:
    out = resize(np.full((512, 512), 0.3712, dtype=np.float32), size, method)
    # float32 arithmetic: constant to a few units in the last place, no drift or ringing. Area
    # boxes end where TensorFlow's float32 products put them: its own output for 512 → 700 is
    # off by 8.5e-6 too, so ours must be.
    atol = 1e-5 if method == "tf_area" else 1e-6
    np.testing.assert_allclose(out, 0.3712, rtol=0, atol=atol)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("tf_bilinear", [0, 0.25, 0.75, 1]),  # half-pixel centres, edges clamped
        ("antialias", [0, 0.25, 0.75, 1]),  # enlarging: the plain triangle, same thing
        ("tf_area", [0, 0, 1, 1]),  # each output box inside one source cell: replicated
    ],
)
def test_resize_upscale(method: ResizeMethod, expected: list[float]) -> None:
    np.testing.assert_allclose(resize(np.array([[0.0, 1.0]]), (1, 4), method), [expected])


# Windowed pixels lie in [0, 1]: a ramp across that range.
RAMP = np.tile(np.arange(512, dtype=np.float64) / 511, (32, 1))


@pytest.mark.parametrize("size", [(64, 128), (64, 1000), (64, 333), (64, 500), (64, 77)])
def test_bilinear_keeps_a_linear_ramp_linear(size: tuple[int, int]) -> None:
    out = resize(RAMP, size, "tf_bilinear")

    assert np.all(np.diff(out, axis=1) > 0)  # still strictly increasing along the ramp
    assert np.allclose(out, out[:1])  # and constant across it
    interior = out[0, 4:-4].astype(np.float64)
    np.testing.assert_allclose(np.diff(interior), 512 / size[1] / 511, rtol=1e-3)


@pytest.mark.parametrize("method", ["tf_area", "antialias"])
@pytest.mark.parametrize(
    ("size", "wobble"), [((64, 128), 1e-4), ((64, 77), 1e-2), ((64, 333), 0.11)]
)
def test_filtered_ramp_stays_monotonic(
    method: ResizeMethod, size: tuple[int, int], wobble: float
) -> None:
    # Area and the antialiased triangle weigh whole source pixels, so at a non-integer factor the
    # taps fall unevenly and the steps wobble around the ramp's slope (TensorFlow's too: the
    # comparison above holds these to it). At an integer factor (512 → 128) they are exact.
    out = resize(RAMP, size, method)

    assert np.all(np.diff(out, axis=1) > 0)
    assert np.allclose(out, out[:1])
    steps = np.diff(out[0, 4:-4].astype(np.float64))
    np.testing.assert_allclose(steps, 512 / size[1] / 511, rtol=wobble)


def test_shrinking_aliases_unless_the_method_filters() -> None:
    # Stripes 1,0,0 across the columns, shrunk 3x. Output pixel i is centred on source pixel
    # 3i + 1, a 0: plain bilinear samples it alone (pure aliasing: all 0); area averages the three
    # stripes, and the antialiased triangle (half-width 3: taps 1/3, 2/3, 1, 2/3, 1/3 over 3)
    # gives 2/3 to one 1 and 1/3 to the next: both 1/3, the stripes' mean.
    stripes = np.tile(np.array([1.0, 0.0, 0.0], dtype=np.float32), (30, 170))
    expected = {"tf_bilinear": 0.0, "tf_area": 1 / 3, "antialias": 1 / 3}
    for method, value in expected.items():
        out = resize(stripes, (10, 170), method)
        np.testing.assert_allclose(out[:, 1:-1], value, atol=1e-6, err_msg=method)


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_resize_same_size_is_identity_copy(method: ResizeMethod) -> None:
    image = np.random.default_rng(1).random((20, 30)).astype(np.float32)
    out = resize(image, (20, 30), method)
    np.testing.assert_array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_resize_keeps_trailing_channels(method: ResizeMethod) -> None:
    image = np.random.default_rng(2).random((9, 8, 2)).astype(np.float32)
    out = resize(image, (4, 16), method)
    assert out.shape == (4, 16, 2)
    for channel in range(2):
        np.testing.assert_allclose(
            out[..., channel], resize(image[..., channel], (4, 16), method), rtol=1e-6, atol=1e-7
        )

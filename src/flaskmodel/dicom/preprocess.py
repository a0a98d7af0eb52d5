"""Turn one HU slice into model input: window, resize, normalise.

Windowing here is the linear clip used for model inputs, ``clip((HU - (L - W/2)) / W, 0, 1)``,
not DICOM's VOI LUT (``pydicom.pixels.apply_voi_lut`` uses ``L - 0.5`` and ``W - 1`` and an output
range taken from the bit depth); the two differ by a fraction of an HU step at the window edges.

Resizing reproduces, in numpy, the TensorFlow call a model was trained with, named by
``PreprocessConfig.resize`` (``TF_RESIZE_ARGS`` spells each call out):

* ``tf_bilinear`` (the default; the demo model trains with it): ``tf.image.resize(image, size,
  "bilinear", antialias=False)``. Half-pixel centres, edges clamped, two taps: shrinking samples
  the source, so a 2x shrink weights 8 → 4 pixels ``0, .5, .5, 0`` and larger shrinks alias.
* ``tf_area``: ``tf.image.resize(image, size, "area")``. Each output pixel is the mean of the
  source pixels its box covers, by covered fraction (8 → 4: ``0, .5, .5, 0``; 3 → 2:
  ``2/3, 1/3, 0``); enlarging replicates pixels, blending only across box edges.
* ``antialias``: ``tf.image.resize(image, size, "bilinear", antialias=True)``. A triangle filter
  stretched by the shrink factor, truncated at the edges and renormalised (8 → 4: ``.125, .375,
  .375, .125``); plain bilinear when enlarging.

Each is separable: two matrix products with ``[target, source]`` weight matrices built once per
(source, target, method) and cached. The sample positions are computed in float32 exactly as
TensorFlow's kernels compute them (its float32 rounding of ``i * 512/224`` moves a sample by up to
~3e-5 pixels, which would otherwise show), the weights from them in float64, the products in
float32; the result equals TensorFlow's to float32 rounding (tests/dicom/test_preprocess.py).
TensorFlow itself is never imported here: the worker runs no TF ops per slice outside the model.
Order of operations: window, then resize, then normalise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flaskmodel.errors import InvalidRequest, SeriesError

#: Largest accepted side of ``input_size`` (pixels); guards against absurd allocations.
MAX_INPUT_SIDE = 4096

FILE_WINDOW = "file"


class WindowSpec(BaseModel):
    """A display window in HU: level (centre) and width."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    center: float
    """Window level in HU."""
    width: float = Field(gt=0)
    """Window width in HU (> 0)."""


WINDOW_PRESETS: dict[str, WindowSpec] = {
    "brain": WindowSpec(center=40, width=80),
    "subdural": WindowSpec(center=75, width=215),
    "stroke": WindowSpec(center=40, width=40),
    "soft_tissue": WindowSpec(center=40, width=400),
    "abdomen": WindowSpec(center=40, width=400),
    "liver": WindowSpec(center=60, width=160),
    "mediastinum": WindowSpec(center=50, width=350),
    "lung": WindowSpec(center=-600, width=1500),
    "bone": WindowSpec(center=400, width=1800),
}
"""Named windows (centre, width in HU) accepted as ``PreprocessConfig.window``."""

Side = Annotated[int, Field(gt=0, le=MAX_INPUT_SIDE)]

ResizeMethod = Literal["tf_bilinear", "tf_area", "antialias"]
RESIZE_METHODS: tuple[ResizeMethod, ...] = get_args(ResizeMethod)
#: The method the demo model is trained with (``flaskmodel.demo.models``), and so the default.
DEFAULT_RESIZE: ResizeMethod = "tf_bilinear"
TF_RESIZE_ARGS: dict[ResizeMethod, dict[str, str | bool]] = {
    "tf_bilinear": {"method": "bilinear", "antialias": False},
    "tf_area": {"method": "area"},
    "antialias": {"method": "bilinear", "antialias": True},
}
"""The ``tf.image.resize(images, size, **args)`` keyword arguments each method reproduces."""


class PreprocessConfig(BaseModel):
    """How a slice becomes model input."""

    model_config = ConfigDict(extra="forbid")

    input_size: tuple[Side, Side] = (256, 256)
    """Output ``(height, width)`` in pixels."""
    window: str | WindowSpec = "soft_tissue"
    """A preset name from ``WINDOW_PRESETS``, ``"file"`` (the DICOM file's own first
    WindowCenter/WindowWidth), or an explicit ``{center, width}``."""
    normalise: Literal["unit", "zscore"] = "unit"
    """``unit``: the windowed value in [0, 1]; ``zscore``: that value standardised per slice."""
    resize: ResizeMethod = DEFAULT_RESIZE
    """The TensorFlow resize the model was trained with, reproduced in numpy: ``tf_bilinear``
    (``tf.image.resize(..., "bilinear", antialias=False)``, the default), ``tf_area``
    (``"area"``) or ``antialias`` (``"bilinear", antialias=True``)."""

    @field_validator("resize", mode="before")
    @classmethod
    def _known_resize(cls, value: object) -> object:
        if value not in RESIZE_METHODS:
            names = ", ".join(RESIZE_METHODS)
            raise ValueError(f"unknown resize method {value!r}; use one of {names}")
        return value

    @field_validator("window")
    @classmethod
    def _known_window(cls, value: str | WindowSpec) -> str | WindowSpec:
        if isinstance(value, str) and value != FILE_WINDOW and value not in WINDOW_PRESETS:
            names = ", ".join(sorted([*WINDOW_PRESETS, FILE_WINDOW]))
            raise ValueError(f"unknown window {value!r}; use one of {names} or {{center, width}}")
        return value


def resolve_window(config: PreprocessConfig, file_window: tuple[float, float] | None) -> WindowSpec:
    """The window to apply: explicit, a preset, or the file's own (``SeriesError`` if none)."""
    window = config.window
    if isinstance(window, WindowSpec):
        return window
    if window == FILE_WINDOW:
        if file_window is None:
            raise SeriesError(
                "window 'file' requested but the slice has no usable WindowCenter/WindowWidth"
            )
        center, width = file_window
        if not width > 0:
            raise SeriesError(f"window 'file' requested but the slice's WindowWidth is {width}")
        return WindowSpec(center=center, width=width)
    try:
        return WINDOW_PRESETS[window]
    except KeyError:
        # Reachable only through model_construct(), which skips validation.
        raise InvalidRequest(f"unknown window preset {window!r}") from None


def apply_window(hu: np.ndarray, window: WindowSpec) -> np.ndarray:
    """``clip((hu - (center - width/2)) / width, 0, 1)`` as float32 (linear clip, not VOI LUT)."""
    low = np.float32(window.center - window.width / 2)
    scaled = (np.asarray(hu, dtype=np.float32) - low) / np.float32(window.width)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def resize(
    image: np.ndarray, size: tuple[int, int], method: ResizeMethod = DEFAULT_RESIZE
) -> np.ndarray:
    """Resize the first two axes of ``image`` to ``size = (height, width)``; float32.

    ``method`` names the TensorFlow resize reproduced (see the module doc). Returns a float32 copy
    unchanged when the size already matches (every method is the identity then).
    """
    if image.ndim < 2:
        raise ValueError(f"resize needs at least 2 dimensions, got shape {image.shape}")
    height, width = size
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive, got {size}")
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.shape[:2] == (height, width):
        return np.array(pixels, dtype=np.float32)
    rows = resize_weights(pixels.shape[0], height, method)
    cols = resize_weights(pixels.shape[1], width, method)
    if pixels.ndim == 2:
        source_h, source_w = pixels.shape
        # Same result either way round; take the order with fewer multiply-adds.
        if height * source_w * (source_h + width) <= source_h * width * (source_w + height):
            out = (rows @ pixels) @ cols.T
        else:
            out = rows @ (pixels @ cols.T)
        return np.ascontiguousarray(out, dtype=np.float32)
    # Trailing axes (channels): rows first ([h, W, ...]), then columns ([w, h, ...] moved back).
    out = np.tensordot(rows, pixels, axes=(1, 0))
    return np.ascontiguousarray(np.moveaxis(np.tensordot(cols, out, axes=(1, 1)), 0, 1))


def preprocess_slice(
    hu: np.ndarray, config: PreprocessConfig, file_window: tuple[float, float] | None = None
) -> np.ndarray:
    """One HU slice ``[rows, columns]`` to model input ``[height, width, 1]`` float32."""
    if hu.ndim != 2:
        raise SeriesError(f"expected a 2-D slice, got shape {hu.shape}")
    windowed = apply_window(hu, resolve_window(config, file_window))
    image = resize(windowed, config.input_size, config.resize)
    if config.normalise == "zscore":
        mean = image.mean(dtype=np.float64)
        std = image.std(dtype=np.float64)
        # A flat slice (all air, or all clipped) has no spread: centre it and stop there.
        image = (image - mean) / std if std > 1e-6 else image - mean
        image = image.astype(np.float32, copy=False)
    return image[..., np.newaxis]


@lru_cache(maxsize=128)
def resize_weights(source: int, target: int, method: ResizeMethod) -> np.ndarray:
    """``[target, source]`` float32 weights of ``method`` (cached, read-only).

    ``resize`` is ``rows @ image @ cols.T`` with these; row ``i`` holds the weights of the source
    pixels in output pixel ``i``. Rows sum to 1 (``tf_area``'s, like TensorFlow's, to within the
    float32 rounding of its box ends: 1e-5 at 512 pixels).
    """
    if source <= 0 or target <= 0:
        raise ValueError(f"resize sizes must be positive, got {source} -> {target}")
    try:
        build = _WEIGHTS[method]
    except KeyError:
        names = ", ".join(RESIZE_METHODS)
        raise ValueError(f"unknown resize method {method!r}; use one of {names}") from None
    weights = build(source, target).astype(np.float32)
    weights.setflags(write=False)
    return weights


# TensorFlow's kernels compute positions in float32: ``_F`` keeps each step of ours in float32 too
# (numpy rounds every float32 operation), so the samples land where TensorFlow's do.
_F = np.float32


def _bilinear_weights(source: int, target: int) -> np.ndarray:
    """TF ``ResizeBilinear`` (half-pixel centres): output ``i`` samples ``(i + .5) * s - .5``
    between its two neighbours, indices clamped to the image."""
    scale = _F(source) / _F(target)
    at = (np.arange(target, dtype=np.float32) + _F(0.5)) * scale - _F(0.5)
    below = np.floor(at)
    lerp = (at - below).astype(np.float64)
    lower = np.clip(below.astype(np.int64), 0, source - 1)
    upper = np.clip(np.ceil(at).astype(np.int64), 0, source - 1)
    weights = np.zeros((target, source))
    out = np.arange(target)
    np.add.at(weights, (out, lower), 1.0 - lerp)
    np.add.at(weights, (out, upper), lerp)
    return weights


def _area_weights(source: int, target: int) -> np.ndarray:
    """TF ``ResizeArea``: output ``i`` averages source cells ``[j, j + 1)`` over its box
    ``[i * s, (i + 1) * s)`` by covered length, divided by ``s``; cells past the edge (float
    rounding of the last box end) count as the edge cell."""
    scale = _F(source) / _F(target)
    edges = (np.arange(target + 1, dtype=np.float32) * scale).astype(np.float64)
    start, stop = edges[:-1, np.newaxis], edges[1:, np.newaxis]
    cell = np.arange(source + 1, dtype=np.float64)[np.newaxis, :]
    # TF's case analysis, kept as is: a box inside one cell weighs exactly ``s`` (not the
    # difference of its rounded ends), a fully covered cell exactly 1.
    covered = np.where(
        cell < start,
        np.where(cell + 1 > stop, float(scale), cell + 1 - start),
        np.where(cell + 1 > stop, stop - cell, 1.0),
    )
    inside = (cell >= np.floor(start)) & (cell < np.ceil(stop))
    weights = np.where(inside, covered, 0.0) / float(scale)
    weights[:, source - 1] += weights[:, source]
    return np.ascontiguousarray(weights[:, :source])


def _antialias_weights(source: int, target: int) -> np.ndarray:
    """TF ``ScaleAndTranslate`` with the triangle kernel and ``antialias``: output ``i`` centred
    at ``(i + .5) / k`` (``k = target/source``), the triangle widened by ``max(1/k, 1)``, pixels
    beyond the image dropped and the rest renormalised."""
    scale = _F(target) / _F(source)
    inverse = _F(1.0 / float(scale))
    widen = max(inverse, _F(1.0))
    centre = (np.arange(target, dtype=np.float32) + _F(0.5)) * inverse
    offset = (np.arange(source, dtype=np.float32) + _F(0.5))[np.newaxis, :] - centre[:, np.newaxis]
    distance = np.abs(offset * (_F(1.0) / widen)).astype(np.float64)
    weights = np.clip(1.0 - distance, 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights


_WEIGHTS: dict[str, Callable[[int, int], np.ndarray]] = {
    "tf_bilinear": _bilinear_weights,
    "tf_area": _area_weights,
    "antialias": _antialias_weights,
}

"""Turn one HU slice into model input: window, resize, normalise.

Windowing here is the linear clip used for model inputs, ``clip((HU - (L - W/2)) / W, 0, 1)``,
not DICOM's VOI LUT (``pydicom.pixels.apply_voi_lut`` uses ``L - 0.5`` and ``W - 1`` and an output
range taken from the bit depth); the two differ by a fraction of an HU step at the window edges.

Resizing is separable and works on the image's linear interpolant with half-pixel centres (the
convention of ``tf.image.resize(method="bilinear")``), edges clamped. Enlarging samples it at each
output pixel centre: plain bilinear. Shrinking averages it over each output pixel's footprint
(area averaging of the bilinear surface), so every source pixel contributes, large downscales do
not alias, and a linear ramp stays exactly linear away from the edges. Order of operations:
window, then resize, then normalise.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flaskmodel.errors import InvalidRequest, SeriesError

logger = logging.getLogger(__name__)

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


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the first two axes of ``image`` to ``size = (height, width)``; float32.

    Linear interpolation with half-pixel centres; antialiased when shrinking (see module doc).
    Returns a float32 copy unchanged when the size already matches.
    """
    if image.ndim < 2:
        raise ValueError(f"resize needs at least 2 dimensions, got shape {image.shape}")
    height, width = size
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive, got {size}")
    if image.shape[:2] == (height, width):
        return np.array(image, dtype=np.float32)
    rows = _weights32(image.shape[0], height)
    cols = _weights32(image.shape[1], width)
    # Separable: rows first ([h, W, ...]), then columns ([w, h, ...] moved back to [h, w, ...]).
    # In float32 (half the time of float64; windowed pixels in [0, 1] lose nothing that shows).
    out = np.tensordot(rows, np.asarray(image, dtype=np.float32), axes=(1, 0))
    return np.ascontiguousarray(np.moveaxis(np.tensordot(cols, out, axes=(1, 1)), 0, 1))


def preprocess_slice(
    hu: np.ndarray, config: PreprocessConfig, file_window: tuple[float, float] | None = None
) -> np.ndarray:
    """One HU slice ``[rows, columns]`` to model input ``[height, width, 1]`` float32."""
    if hu.ndim != 2:
        raise SeriesError(f"expected a 2-D slice, got shape {hu.shape}")
    windowed = apply_window(hu, resolve_window(config, file_window))
    image = resize(windowed, config.input_size)
    if config.normalise == "zscore":
        mean = image.mean(dtype=np.float64)
        std = image.std(dtype=np.float64)
        # A flat slice (all air, or all clipped) has no spread: centre it and stop there.
        image = (image - mean) / std if std > 1e-6 else image - mean
        image = image.astype(np.float32, copy=False)
    return image[..., np.newaxis]


@lru_cache(maxsize=64)
def _weights(source: int, target: int) -> np.ndarray:
    """``[target, source]`` resampling matrix whose rows sum to 1 (cached, read-only).

    Output pixel ``i`` is centred on source coordinate ``c = (i + 0.5) * scale - 0.5`` (pixel
    centres at integers, the image extended by its edge values). Enlarging: the linear
    interpolant at ``c``. Shrinking: its mean over ``[c - scale/2, c + scale/2]``.
    """
    scale = source / target
    last = source - 1
    centres = (np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5
    pixels = np.arange(source, dtype=np.float64)[np.newaxis, :]
    if scale <= 1.0:
        at = np.clip(centres, 0, last)[:, np.newaxis]
        weights = np.clip(1.0 - np.abs(pixels - at), 0.0, None)
    else:
        start, stop = centres - scale / 2, centres + scale / 2
        inside_start = np.clip(start, 0, last)[:, np.newaxis]
        inside_stop = np.clip(stop, 0, last)[:, np.newaxis]
        # Integral of each pixel's hat function over the part of the footprint inside the image.
        weights = _hat_integral(inside_stop - pixels) - _hat_integral(inside_start - pixels)
        # Beyond the edges the image is constant at the edge pixel's value.
        weights[:, 0] += np.clip(np.minimum(stop, 0.0) - start, 0.0, None)
        weights[:, -1] += np.clip(stop - np.maximum(start, last), 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=64)
def _weights32(source: int, target: int) -> np.ndarray:
    """``_weights`` in float32 (cached, read-only)."""
    weights = _weights(source, target).astype(np.float32)
    weights.setflags(write=False)
    return weights


def _hat_integral(t: np.ndarray) -> np.ndarray:
    """Integral of the unit hat ``max(0, 1 - |x|)`` from -inf to ``t``."""
    t = np.clip(t, -1.0, 1.0)
    return np.where(t <= 0, (t + 1) ** 2 / 2, 1 - (1 - t) ** 2 / 2)

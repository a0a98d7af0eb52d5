"""``flaskmodel demo``: build the demo models and the demo CT series, offline and deterministically.

``build_demo`` puts ``ct_classifier`` and ``tiny`` (``flaskmodel.demo.models``) under the model
root and a synthetic phantom CT series (``flaskmodel.demo.series``) under
``<data_root>/<DEMO_SERIES_UID>/``. Assets that already exist are left alone unless ``force`` is
given; every asset is written to a hidden temporary folder and renamed into place, so an
interrupted build never leaves a half model or series that would count as existing.

Importing this module imports neither TensorFlow nor pydicom.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flaskmodel.demo.models import (
    CONFIG_FILE,
    CT_MODEL,
    TINY_MODEL,
    build_ct_classifier,
    build_tiny,
)
from flaskmodel.demo.series import (
    DEMO_SERIES_UID,
    REGION_NAMES,
    series_complete,
    write_demo_series,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_SERIES_SIZE",
    "DEMO_SERIES_SLICES",
    "DEMO_SERIES_UID",
    "REGION_NAMES",
    "build_ct_classifier",
    "build_demo",
    "build_tiny",
    "write_demo_series",
]

#: Slices and pixel size (square) of the demo series ``build_demo`` writes.
DEMO_SERIES_SLICES = 40
DEMO_SERIES_SIZE = 128
DEMO_VERSION = 1


def _model_exists(models_root: Path, name: str, *, needs_config: bool) -> bool:
    folder = models_root / name
    has_model = (folder / str(DEMO_VERSION) / "saved_model.pb").is_file()
    return has_model and (not needs_config or (folder / CONFIG_FILE).is_file())


def _ct_input_size(models_root: Path) -> list[int] | None:
    """The input size recorded in an existing ``ct_classifier/flaskmodel.json``, if readable."""
    try:
        config = json.loads((models_root / CT_MODEL / CONFIG_FILE).read_text())
        size = config["preprocess"]["input_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [int(v) for v in size] if isinstance(size, list) else None


def _elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def build_demo(
    models_root: Path, data_root: Path, ct_size: int = 256, force: bool = False
) -> list[str]:
    """Build whatever of the demo assets is missing; returns one human-readable line per asset.

    Lines start with the asset's name and say ``built``/``wrote`` or ``exists``. Without ``force``
    an existing model version is kept even when its input size differs from ``ct_size`` (the line
    says so); with ``force`` every asset is rebuilt and replaced.
    """
    lines: list[str] = []

    ct_folder = models_root / CT_MODEL / str(DEMO_VERSION)
    if not force and _model_exists(models_root, CT_MODEL, needs_config=True):
        existing = _ct_input_size(models_root)
        if existing is not None and existing != [ct_size, ct_size]:
            lines.append(
                f"{CT_MODEL}: exists {ct_folder} with input {existing[0]}x{existing[1]}, "
                f"not {ct_size}x{ct_size} (rebuild with force)"
            )
        else:
            lines.append(f"{CT_MODEL}: exists {ct_folder}")
    else:
        started = time.perf_counter()
        build_ct_classifier(models_root, size=ct_size, version=DEMO_VERSION)
        lines.append(
            f"{CT_MODEL}: built {ct_folder} ({ct_size}x{ct_size} input, "
            f"{len(REGION_NAMES)} classes) in {_elapsed(started)}"
        )

    tiny_folder = models_root / TINY_MODEL / str(DEMO_VERSION)
    if not force and _model_exists(models_root, TINY_MODEL, needs_config=False):
        lines.append(f"{TINY_MODEL}: exists {tiny_folder}")
    else:
        started = time.perf_counter()
        build_tiny(models_root, version=DEMO_VERSION)
        lines.append(f"{TINY_MODEL}: built {tiny_folder} in {_elapsed(started)}")

    series_folder = data_root / DEMO_SERIES_UID
    if not force and series_complete(series_folder, DEMO_SERIES_SLICES):
        lines.append(f"series {DEMO_SERIES_UID}: exists {series_folder}")
    else:
        started = time.perf_counter()
        write_demo_series(data_root, n_slices=DEMO_SERIES_SLICES, size=DEMO_SERIES_SIZE)
        lines.append(
            f"series {DEMO_SERIES_UID}: wrote {series_folder} ({DEMO_SERIES_SLICES} slices of "
            f"{DEMO_SERIES_SIZE}x{DEMO_SERIES_SIZE}) in {_elapsed(started)}"
        )

    for line in lines:
        logger.info("demo: %s", line)
    return lines

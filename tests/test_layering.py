"""Imports run one way: a module may import its own sub-package and the layers below it only.

``cli → bench → web | worker | deploy | demo → sync → jobs → runtime → dicom | metrics | codecs
→ storage → foundation`` (settings, errors, schemas, logs, heap, scheduling, client). ``bench``
drives the stack and the demo, so it sits above them; ``runtime`` reads a model's DICOM
preprocessing and records batch metrics, so it sits above ``dicom`` and ``metrics``; ``metrics``
keeps its counters in Redis through ``storage``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "flaskmodel"

FOUNDATION = {"settings", "errors", "schemas", "logs", "heap", "scheduling", "client"}
#: Each part and the parts it may import (besides itself and the foundation).
ALLOWED: dict[str, set[str]] = {
    "storage": set(),
    "codecs": set(),
    "dicom": set(),
    "metrics": {"storage"},
    "runtime": {"codecs", "dicom", "metrics", "storage"},
}
ALLOWED["jobs"] = {"runtime", *ALLOWED["runtime"]}
ALLOWED["sync"] = {"jobs", *ALLOWED["jobs"]}
for _top in ("web", "worker", "deploy", "demo", "gateway"):
    ALLOWED[_top] = {"sync", *ALLOWED["sync"]}
ALLOWED["bench"] = {"web", "worker", "deploy", "demo", *ALLOWED["sync"]}
ALLOWED["cli"] = {*ALLOWED["bench"], "bench", "gateway"}
ALLOWED["__main__"] = {"cli"}
#: Inside the foundation: logging is configured from Settings, which shares a few patterns with
#: the request schemas.
FOUNDATION_ALLOWED = {"logs": {"settings"}, "settings": {"schemas"}}


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "flaskmodel" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "flaskmodel":
                found.update(f"flaskmodel.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _violations(package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        me = rel.with_suffix("").parts[0]
        for module in sorted(_imports(path)):
            part = _part(module)
            if part is None or part == me:
                continue
            if me in FOUNDATION:
                ok = part in FOUNDATION_ALLOWED.get(me, set())
            else:
                ok = part in FOUNDATION or part in ALLOWED[me]
            if not ok:
                bad.append(f"{rel}: imports {module} ({me} may not import {part})")
    return bad


def test_every_part_has_a_place() -> None:
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts = {p for p in parts if not p.startswith(("_", ".")) or p == "__main__"}
    parts -= {"py", "__pycache__"}
    unknown = {p for p in parts if p not in FOUNDATION and p not in ALLOWED}
    assert unknown <= {"py"}, f"parts with no layer: {sorted(unknown)}"


def test_imports_run_one_way() -> None:
    assert _violations() == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself: a codec importing the web tier, or a settings module importing a
    codec, is reported."""
    (tmp_path / "codecs").mkdir()
    (tmp_path / "codecs" / "probe.py").write_text("from flaskmodel.web import services\n")
    (tmp_path / "settings.py").write_text("import flaskmodel.codecs.raw\n")
    assert _violations(tmp_path) == [
        "codecs/probe.py: imports flaskmodel.web (codecs may not import web)",
        "settings.py: imports flaskmodel.codecs.raw (settings may not import codecs)",
    ]


@pytest.mark.parametrize("part", ["runtime", "dicom", "storage"])
def test_lower_parts_import_neither_flask_nor_celery(part: str) -> None:
    for path in (PACKAGE / part).rglob("*.py"):
        roots = {m.split(".")[0] for m in _imports(path)}
        assert not roots & {"flask", "celery"}, path

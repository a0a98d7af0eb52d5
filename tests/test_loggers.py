"""A module defines ``logger = logging.getLogger(__name__)`` only if it logs: every module-level
``logger`` is used somewhere in its module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "flaskmodel"


def unused_loggers(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        defined = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "logger" for t in node.targets)
            for node in tree.body
        )
        used = any(
            isinstance(node, ast.Name) and node.id == "logger" and isinstance(node.ctx, ast.Load)
            for node in ast.walk(tree)
        )
        if defined and not used:
            found.append(str(path.relative_to(package)))
    return found


def test_every_module_that_defines_a_logger_logs() -> None:
    assert unused_loggers() == []


def test_the_check_catches_an_unused_logger(tmp_path: Path) -> None:
    log = "import logging\n\nlogger = logging.getLogger(__name__)\n"
    (tmp_path / "quiet.py").write_text(log + "\nX = 1\n")
    (tmp_path / "loud.py").write_text(log + "\n\ndef f() -> None:\n    logger.info('x')\n")
    (tmp_path / "none.py").write_text("X = 1\n")
    assert unused_loggers(tmp_path) == ["quiet.py"]

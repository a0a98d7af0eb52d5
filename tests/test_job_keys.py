"""Only ``flaskmodel.jobs`` builds job keys: ``flaskmodel:job:*``, ``flaskmodel:result:*``,
``flaskmodel:idem:*`` and ``flaskmodel:jobs*`` (``jobs/keys.py`` names them, ``JobStore`` and its
companions read and write them). Any other module calls their methods instead, so the record's
layout can change in one package.

Reported: a call ``key("job", ...)`` (any of those first parts) and a string or f-string in code
that starts one of those keys. Docstrings and comments may name the keys.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "flaskmodel"
OWNER = "jobs"
PARTS = {"job", "jobs", "result", "idem"}
LITERAL = re.compile(r"flaskmodel:(job|jobs|result|idem)(:|$)")


def _not_code(tree: ast.AST) -> set[int]:
    """ids of the strings of ``tree`` not to look at: docstrings (and other bare string
    statements), and the parts of f-strings (the f-string is looked at whole)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.add(id(node.value))
        elif isinstance(node, ast.JoinedStr):
            skip.update(id(part) for part in node.values)
    return skip


def _called_key(node: ast.Call) -> bool:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name != "key" or not node.args:
        return False
    first = node.args[0]
    return isinstance(first, ast.Constant) and first.value in PARTS


def _literal(node: ast.AST) -> str | None:
    """The text a string or f-string starts with (an f-string up to its first placeholder)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value
    return None


def violations(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if rel.parts[0] == OWNER:
            continue
        tree = ast.parse(path.read_text())
        skip = _not_code(tree)
        here: list[tuple[int, str]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_key(node):
                here.append((node.lineno, "builds a job key with key()"))
            elif id(node) not in skip and isinstance(node, ast.Constant | ast.JoinedStr):
                text = _literal(node)
                if text is not None and LITERAL.match(text):
                    here.append((node.lineno, f"spells a job key ({text!r})"))
        found.extend(f"{rel}:{line}: {what}" for line, what in sorted(here))
    return found


def test_only_the_jobs_package_builds_job_keys() -> None:
    assert violations() == []


def test_the_check_catches_a_job_key_built_elsewhere(tmp_path: Path) -> None:
    """The check itself: every way of building one is reported, outside ``jobs/`` only, and a
    docstring naming a key is not."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "probe.py").write_text(
        '"""Reads ``flaskmodel:job:<id>``."""\n'
        "from flaskmodel.storage.redis import key\n"
        'a = key("job", job_id)\n'
        'b = redis.key("result", job_id)\n'
        'c = f"flaskmodel:idem:{digest}"\n'
        'd = "flaskmodel:jobs"\n'
        'e = key("kv", name)\n'
        'f = "flaskmodel:jobsworth"\n'
    )
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "keys.py").write_text('a = key("job", job_id)\n')
    assert violations(tmp_path) == [
        "worker/probe.py:3: builds a job key with key()",
        "worker/probe.py:4: builds a job key with key()",
        "worker/probe.py:5: spells a job key ('flaskmodel:idem:')",
        "worker/probe.py:6: spells a job key ('flaskmodel:jobs')",
    ]

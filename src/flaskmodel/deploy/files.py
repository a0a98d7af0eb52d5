"""The packaged config templates (``templates/``) and writing what is rendered from them.

Templates use ``@name`` placeholders (``string.Template`` with ``@``, so nginx's own
``$variables`` stay as they are; ``@@`` is a literal ``@``).
"""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path


class _Template(string.Template):
    delimiter = "@"


def template(name: str) -> str:
    """The text of the packaged template ``name``."""
    return resources.files("flaskmodel.deploy").joinpath("templates", name).read_text("utf-8")


def fill(name: str, /, **values: str) -> str:
    """Template ``name`` with every placeholder replaced (a missing value raises KeyError)."""
    return _Template(template(name)).substitute(values)


def write(path: Path, text: str) -> None:
    """Write a rendered file (UTF-8)."""
    path.write_text(text, encoding="utf-8")

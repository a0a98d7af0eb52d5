"""The documentation (README.md and docs/*.md) points only at what exists.

Relative links reach a file and ``#anchor``s a heading (GitHub's slugs); every ``curl`` example's
path is a route of the app; every ``FLASKMODEL_…`` variable is a setting; every ``src/``,
``tests/`` or ``benchmarks/`` path, ``flaskmodel.…`` module, ``make`` target and ``flaskmodel``
command named exists; the configuration table is the one ``Settings`` generates; the README
stays short.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, RequestRedirect

from flaskmodel.cli import main
from flaskmodel.jobs.broker import TASK_RUN_JOB, TASK_RUN_JOBS
from flaskmodel.settings import Settings, settings_table
from flaskmodel.web import create_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150

TABLE = re.compile(r"<!-- settings-table -->\n(.*?)<!-- /settings-table -->", re.S)
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)((?:(?!\n\s*\n).)+?)\1", re.S)  # may wrap, not cross a paragraph
SHELL = {"", "sh", "bash", "shell", "console"}
URL_PATH = re.compile(r"(?:https?://[^/\s'\"]+|\{base\})(/[^\s'\"]*)")
SETTING = re.compile(r"FLASKMODEL_[A-Z0-9_]*[A-Z0-9]")
MODULE = re.compile(r"flaskmodel(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?(?:\(\))?")
REPO_PATH = re.compile(r"(?:src|tests|benchmarks)/[\w./-]*(?:::\w+)?")
MAKE = re.compile(r"(?:^|[\s`;(])make ([a-z][\w-]*)")
COMMAND = re.compile(r"(?:^|[\s`/(]|-m )flaskmodel ([a-z][\w-]*)(?: ([a-z][\w-]*))?")

#: Served by something other than the Flask app, so not in its URL map.
SERVED_ELSEWHERE = (
    # The DICOM front door's STOW-RS listener; nginx proxies /dicomweb/ to it
    # (`dicom.http_host`/`dicom.http_port`).
    "/dicomweb/",
)
#: ``flaskmodel.…`` names that are not Python modules.
NOT_MODULES = {
    "flaskmodel.json": "a model's configuration file beside its versions",
    "flaskmodel.toml": "the settings file",
    TASK_RUN_JOB: "the Celery task of one job (chunk)",
    TASK_RUN_JOBS: "the Celery task of several tensor jobs in one message",
}
#: ``FLASKMODEL_…`` variables that are not settings: read by the command line's HTTP client, and
#: the name of the settings file.
NOT_SETTINGS = {"FLASKMODEL_API_KEY", "FLASKMODEL_CONFIG"}


def _split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``text`` outside fenced code blocks, and the blocks as (language, text)."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    lang, body = "", prose
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence, lang, body = opened.group(1), opened.group(2), []
            continue
        if fence is not None and line.strip().startswith(fence):
            blocks.append((lang, "\n".join(body)))
            fence = None
            continue
        (body if fence is not None else prose).append(line)
    return "\n".join(prose), blocks


def _without_table(text: str) -> str:
    return TABLE.sub("", text)


def _spans(prose: str) -> list[str]:
    return [" ".join(m.group(2).split()) for m in CODE_SPAN.finditer(prose)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: formatting dropped, lower case, punctuation dropped, spaces
    as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in _split(text)[0].splitlines():
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(doc: Path, text: str) -> list[str]:
    problems = []
    for match in LINK.finditer(re.sub(CODE_SPAN, "", _split(text)[0])):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            problems.append(f"{doc.name}: {target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            problems.append(f"{doc.name}: {target}: no such heading")
    return problems


def curl_requests(text: str) -> Iterator[tuple[str, str, str]]:
    """(command, method, path) of every curl command in the shell blocks of ``text``."""
    for lang, block in _split(text)[1]:
        if lang not in SHELL:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            if not re.search(r"(?:^|[\s;|&(])curl\s", line):
                continue
            command = line.split(" # ", 1)[0]
            explicit = re.search(r"(?:-X|--request)\s+([A-Z]+)", command)
            sends = re.search(r"\s(?:-d|--data[\w-]*|-T|--upload-file|-F)\s", command)
            method = explicit.group(1) if explicit else "POST" if sends else "GET"
            paths = URL_PATH.findall(command)
            if not paths:
                yield command.strip(), method, ""
            for path in paths:
                yield command.strip(), method, path


def unrouted(url_map: Map, method: str, path: str) -> bool:
    """Whether the app has no route for ``method path`` (placeholders stand for any value)."""
    path = re.sub(r"<[^>]+>|\{[^}]+\}", "1", path.split("?", 1)[0].split("#", 1)[0])
    if path.startswith(SERVED_ELSEWHERE):
        return False
    try:
        url_map.bind("localhost").match(path, method=method)
    except RequestRedirect:  # e.g. /ui → /ui/: the app answers it
        return False
    except (NotFound, MethodNotAllowed):
        return True
    return False


def _top_level_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [t.id for t in targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    return []


def _defines(file: Path, name: str) -> bool:
    return any(name in _top_level_names(node) for node in ast.parse(file.read_text()).body)


def module_exists(dotted: str) -> bool:
    """Whether ``flaskmodel.a.b[:attr]`` is a module of src/ or a name defined in one."""
    dotted = dotted.removesuffix("()").replace(":", ".")
    here = ROOT / "src"
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if (here / part / "__init__.py").is_file():
            here = here / part
        elif (here / f"{part}.py").is_file():
            rest = parts[i + 1 :]
            return not rest or (len(rest) == 1 and _defines(here / f"{part}.py", rest[0]))
        else:
            rest = parts[i:]
            return len(rest) == 1 and _defines(here / "__init__.py", rest[0])
    return True


def path_exists(reference: str) -> bool:
    path, _, name = reference.rstrip(".,;:").partition("::")
    file = ROOT / path
    return file.exists() and (not name or (file.is_file() and _defines(file, name)))


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def unknown_names(text: str, settings: set[str]) -> list[str]:
    """Every setting, path, module, make target and command ``text`` names that does not exist."""
    prose, blocks = _split(_without_table(text))
    spans = _spans(prose)
    code = "\n".join([*spans, *(block for _, block in blocks)])
    everything = "\n".join([prose, *(block for _, block in blocks)])
    problems = []
    for match in SETTING.finditer(everything):
        name, after = match.group(0), everything[match.end() : match.end() + 3]
        if after[:2] == "__" and after[2:] in {"*", "…"}:
            if not any(s.startswith(name + "__") for s in settings):
                problems.append(f"no settings section {name}__")
        elif name not in settings and name not in NOT_SETTINGS:
            problems.append(f"no setting {name}")
    for span in spans:
        if MODULE.fullmatch(span) and span not in NOT_MODULES and not module_exists(span):
            problems.append(f"no module or name {span}")
        for reference in REPO_PATH.findall(span):
            if not path_exists(reference):
                problems.append(f"no file or test {reference}")
    targets = make_targets()
    problems += [f"no make target {t}" for t in MAKE.findall(code) if t not in targets]
    for name, sub in COMMAND.findall(code):
        command = main.commands.get(name)
        if command is None:
            problems.append(f"no command flaskmodel {name}")
        elif isinstance(command, click.Group) and sub and sub not in command.commands:
            problems.append(f"no command flaskmodel {name} {sub}")
    return problems


@pytest.fixture(scope="module")
def url_map() -> Map:
    # Nothing here talks to Redis: an unreachable URL proves it.
    return create_app(Settings(redis={"url": "redis://127.0.0.1:1/0"})).url_map


@pytest.fixture(scope="module")
def settings() -> set[str]:
    return {row.split("`")[1] for row in settings_table().splitlines()[2:]}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    assert broken_links(doc, doc.read_text()) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_curl_examples_use_routes_of_the_app(doc: Path, url_map: Map) -> None:
    problems = [
        f"{method} {path or '(no URL)'}: {command}"
        for command, method, path in curl_requests(doc.read_text())
        if not path or unrouted(url_map, method, path)
    ]
    assert problems == []


def test_the_readme_shows_the_three_kinds_of_request(url_map: Map) -> None:
    found = {(method, path) for _, method, path in curl_requests(README.read_text())}
    paths = {path for _, path in found}
    assert ("POST", "/v1/models/tiny:predict") in found
    assert ("POST", "/v2/models/tiny/infer") in found
    assert ("POST", "/v1/jobs") in found
    assert any(p.startswith("/v1/jobs/") for p in paths)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_settings_paths_modules_targets_and_commands_exist(
    doc: Path, settings: set[str]
) -> None:
    assert unknown_names(doc.read_text(), settings) == []


def test_configuration_table_is_current() -> None:
    match = TABLE.search(CONFIGURATION.read_text())
    assert match, "docs/configuration.md lacks the generated settings table markers"
    assert match.group(1) == settings_table(), (
        "docs/configuration.md's table is stale: regenerate it with `make docs`"
    )


def test_readme_stays_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_non_module_names_are_what_they_claim() -> None:
    assert TASK_RUN_JOB == "flaskmodel.run_job" and TASK_RUN_JOBS == "flaskmodel.run_jobs"
    assert "FLASKMODEL_API_KEY" in (ROOT / "src" / "flaskmodel" / "cli.py").read_text()


def test_the_checks_catch_what_they_are_for(tmp_path: Path, url_map: Map) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Part `two`: B\n")
    bad = tmp_path / "page.md"
    text = (
        "[ok](other.md#part-two-b) [gone](missing.md) [anchor](other.md#nope)\n\n"
        "```sh\ncurl -s http://127.0.0.1:8000/v1/nothing\n"
        "curl -s -X DELETE http://127.0.0.1:8000/healthz\n"
        "curl -s http://127.0.0.1:8000/v1/jobs/<job_id>\n"
        "make readme && flaskmodel stack\n```\n\n"
        "`FLASKMODEL_RUNTIME__TFSERVING_URL` `FLASKMODEL_BATCHING__*` `flaskmodel.stack` "
        "`flaskmodel.deploy.stack` `src/flaskmodel/no_such.py` `tests/test_docs.py::test_nope`\n"
    )
    bad.write_text(text)
    assert broken_links(bad, text) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#nope: no such heading",
    ]
    routed = [(m, p, unrouted(url_map, m, p)) for _, m, p in curl_requests(text)]
    assert [r[2] for r in routed] == [True, True, False]
    settings = {"FLASKMODEL_BATCHING__MAX_BATCH_SIZE"}
    assert unknown_names(text, settings) == [
        "no setting FLASKMODEL_RUNTIME__TFSERVING_URL",
        "no module or name flaskmodel.stack",
        "no file or test src/flaskmodel/no_such.py",
        "no file or test tests/test_docs.py::test_nope",
        "no make target readme",
        "no command flaskmodel stack",
    ]

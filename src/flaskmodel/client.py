"""A small HTTP client for FlaskModel's job API (stdlib only; used by the CLI), the tensor job
inputs it reads from files (``load_inputs``: JSON, or numpy's ``.npy``/``.npz``) and the tables
the CLI shows its answers in (``jobs_table``, ``result_table``)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


# Longest ``?wait=`` one read asks for (the server caps it too).
LONGEST_WAIT = 30.0


class ClientError(Exception):
    """An error answer from the server (or no answer at all)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class Client:
    """Talks to one FlaskModel server."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **self._auth, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                message = json.loads(detail).get("error", detail)
            except ValueError:
                message = detail
            raise ClientError(exc.code, message) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ClientError(0, f"cannot reach {self.base_url}: {exc}") from exc
        return json.loads(raw) if raw else None

    def submit(
        self, payload: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        result: dict[str, Any] = self._call("POST", "/v1/jobs", payload, headers)
        return result

    def submit_series(
        self,
        series_uid: str,
        *,
        model: str,
        start: int | None = None,
        stop: int | None = None,
        version: int | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": model, "series_uid": series_uid}
        if start is not None or stop is not None:
            payload["slices"] = {"start": start, "stop": stop}
        return self.submit(_with_options(payload, version=version, priority=priority))

    def submit_tensor(
        self,
        inputs: list[Any] | dict[str, Any],
        *,
        model: str,
        version: int | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """A tensor job: ``inputs`` as ``POST /v1/jobs`` takes them (rows, or columns by name)."""
        payload: dict[str, Any] = {"model": model, "inputs": inputs}
        return self.submit(_with_options(payload, version=version, priority=priority))

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest jobs, newest first (no results)."""
        return list(self.jobs_page(limit)["jobs"])

    def jobs_page(self, limit: int = 20) -> dict[str, Any]:
        """``GET /v1/jobs``'s answer as it is: ``{"jobs": [...]}``."""
        body: dict[str, Any] = self._call("GET", f"/v1/jobs?limit={limit}")
        return body

    def job(self, job_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """The job; with ``wait``, the server holds the answer up to that many seconds until
        the job has finished (``?wait=``)."""
        query = f"?wait={wait:.3f}" if wait >= 0.001 else ""
        result: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}{query}")
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/jobs/{job_id}")
        return result

    def series_results(self, series_uid: str, *, model: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/series/{series_uid}/results?model={model}")
        return result

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.25,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Until the job finishes. Without ``on_progress`` the server wakes the call when the
        job ends (``?wait=``, no polling); with it, polls every ``poll`` seconds so that
        ``on_progress`` sees every state read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            hold = 0.0
            if on_progress is None:  # the answer must come back within the client's timeout
                left = float("inf") if deadline is None else deadline - time.monotonic()
                hold = max(0.0, min(left, self.timeout / 2, LONGEST_WAIT))
            view = self.job(job_id, wait=hold)
            if on_progress is not None:
                on_progress(view)
            if view["state"] in TERMINAL:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(0, f"job {job_id} still {view['state']} after {timeout} s")
            if not hold:
                time.sleep(poll)


def _with_options(payload: dict[str, Any], **options: int | None) -> dict[str, Any]:
    return {**payload, **{k: v for k, v in options.items() if v is not None}}


def load_inputs(path: Path) -> list[Any] | dict[str, Any]:
    """A tensor job's ``inputs`` from a file; ValueError says what is wrong with it.

    - ``.npy``: one array, examples along its first axis (rows);
    - ``.npz``: one array per input name (columns);
    - anything else is JSON: a list of examples, ``{"instances": [...]}`` (a TensorFlow Serving
      predict body, rows) or ``{"inputs": ...}`` (rows, or columns by input name).
    """
    if path.suffix in (".npy", ".npz"):
        return _numpy_inputs(path)
    try:
        body = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from exc
    if isinstance(body, list):
        return body
    rows = body.get("instances") if isinstance(body, dict) and len(body) == 1 else None
    if isinstance(rows, list):
        return rows
    given = body.get("inputs") if isinstance(body, dict) and len(body) == 1 else None
    if isinstance(given, list | dict):
        return given
    raise ValueError(
        f'{path}: expected a list of examples, {{"instances": [...]}} or {{"inputs": ...}}'
    )


def _numpy_inputs(path: Path) -> list[Any] | dict[str, Any]:
    import numpy as np  # noqa: PLC0415 - only this file format needs it

    try:
        # Never pickle: a file that asks for it could run code.
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a numpy file: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        return _rows(path, loaded)
    with loaded:
        return {name: _rows(path, loaded[name], name) for name in loaded.files}


def _rows(path: Path, array: Any, name: str = "") -> list[Any]:
    import numpy as np  # noqa: PLC0415

    where = f"{path}{f' [{name}]' if name else ''}"
    if array.ndim == 0:
        raise ValueError(f"{where}: a scalar; examples go along the first axis")
    if array.dtype.kind not in "biufU":
        raise ValueError(f"{where}: dtype {array.dtype} does not travel as JSON")
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        raise ValueError(f"{where}: holds NaN or infinity, which JSON cannot carry")
    rows: list[Any] = array.tolist()
    return rows


def jobs_table(views: list[dict[str, Any]]) -> list[str]:
    """The lines of a table of jobs: id, kind, model, state, progress, created."""
    lines = [f"{'job':<32}  {'kind':<6}  {'model':<16} {'state':<10} {'progress':>9}  created"]
    for view in views:
        progress = f"{view['progress']['done']}/{view['progress']['total']}"
        lines.append(
            f"{view['job_id']:<32}  {view['kind']:<6}  {view['model']:<16} {view['state']:<10} "
            f"{progress:>9}  {view['created_at']}"
        )
    return lines


def result_table(view: dict[str, Any]) -> list[str]:
    """The lines of a succeeded job's result: a series job's per-slice table, a tensor job's
    predictions (one row per example) or outputs (one row per output)."""
    result: dict[str, Any] = view["result"]
    if view["kind"] == "series":
        return _series_table(result)
    lines = [f"model {result['model_name']} v{result['model_version']}"]
    if "predictions" in result:
        lines.append(f"{'index':>5}  prediction")
        lines += [f"{i:>5}  {_brief(row)}" for i, row in enumerate(result["predictions"])]
        return lines
    outputs = result["outputs"]  # columns; a single unnamed output is a bare list
    named = outputs if isinstance(outputs, dict) else {"output": outputs}
    width = max(len("output"), *(len(name) for name in named))
    lines.append(f"{'output':<{width}}  values")
    lines += [f"{name:<{width}}  {_brief(values)}" for name, values in named.items()]
    return lines


def _series_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"series {result['series_uid']}  model {result['model_name']} v{result['model_version']}"
        f"  direction {result['direction']}",
        f"{'index':>5}  {'instance':>8}  {'z (mm)':>9}  {'label':<16} {'raw':<16} score",
    ]
    for row in result["slices"]:
        top = max(row["scores"])
        number = "" if row["instance_number"] is None else row["instance_number"]
        lines.append(
            f"{row['index']:>5}  {number:>8}  {row['z']:>9.2f}  {row['label']:<16} "
            f"{row['label_raw']:<16} {top:.3f}"
        )
    return lines


def _brief(value: Any) -> str:
    """A value of a result in a table: numbers to four significant digits (JSON has them all)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_brief(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_brief(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)

"""A small HTTP client for FlaskModel's job API (stdlib only; used by the CLI)."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

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
        self, series_uid: str, *, model: str, start: int | None = None, stop: int | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": model, "series_uid": series_uid}
        if start is not None or stop is not None:
            payload["slices"] = {"start": start, "stop": stop}
        return self.submit(payload)

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest jobs, newest first (no results)."""
        body: dict[str, Any] = self._call("GET", f"/v1/jobs?limit={limit}")
        return list(body["jobs"])

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

"""Driving the stack with wrk: Lua scripts for POST bodies and job round trips, parsed results."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Every script ends with this: one JSON line of the figures the report needs.
_DONE = """
done = function(summary, latency, requests)
  local completed = 0
  for _, thread in ipairs(threads) do completed = completed + (thread:get("completed") or 0) end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "completed": %d, "p50_us": %d, '
    .. '"p99_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, completed, latency:percentile(50),
    latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
"""

_THREADS = """
threads = {}
setup = function(thread) table.insert(threads, thread) end
"""

# Every request POSTs the file at $WRK_BODY.
_POST_BODY = """
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
"""

# A fixed POST; responses other than 200 count as errors; completed = requests answered 200.
# $WRK_HEADERS adds header fields, one "Name: value" a line (e.g. an API key).
POST_SCRIPT = (
    _THREADS
    + _POST_BODY
    + """
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
for line in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^\\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end
local header_length = os.getenv("WRK_HEADER_LENGTH")
if header_length and header_length ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end
completed = 0
response = function(status, headers, body)
  if status == 200 then completed = completed + 1 end
end
"""
    + _DONE
)

# Job round trip, one connection per thread: POST a job, GET it with ?wait= until SUCCEEDED.
JOB_SCRIPT = (
    _THREADS
    + """
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
local job_body = f:read("*all")
f:close()
local job_id = nil
completed = 0
request = function()
  if job_id == nil then
    return wrk.format("POST", "/v1/jobs", {["Content-Type"] = "application/json"}, job_body)
  end
  return wrk.format("GET", "/v1/jobs/" .. job_id .. "?wait=30")
end
response = function(status, headers, body)
  if job_id == nil then
    if status == 202 then job_id = string.match(body, '"job_id":%s*"(%w+)"') end
  elseif string.find(body, '"SUCCEEDED"', 1, true) then
    completed = completed + 1
    job_id = nil
  elseif string.find(body, '"FAILED"', 1, true) or status ~= 200 then
    job_id = nil
  end
end
"""
    + _DONE
)

# Job round trip in one request: POST the job with ``Prefer: wait=30``; 200 SUCCEEDED completes.
JOB_WAIT_SCRIPT = (
    _THREADS
    + _POST_BODY
    + """
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Prefer"] = "wait=30"
completed = 0
response = function(status, headers, body)
  if status == 200 and string.find(body, '"SUCCEEDED"', 1, true) then completed = completed + 1 end
end
"""
    + _DONE
)


@dataclass(frozen=True)
class Cell:
    """One wrk run."""

    connections: int
    requests: int
    completed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed (Debian package 'wrk'; `make bench` installs it)")
    return found


def run_wrk(
    url: str,
    *,
    script: str,
    body: Path,
    connections: int,
    seconds: float,
    work_dir: Path,
    content_type: str = "application/json",
    header_length: int | None = None,
    one_thread_per_connection: bool = False,
    headers: dict[str, str] | None = None,
) -> Cell:
    """Run wrk once against ``url`` with a Lua ``script``; raises if wrk fails. ``headers`` are
    sent with every request of ``POST_SCRIPT``."""
    lua = work_dir / f"script-{abs(hash(script))}.lua"
    lua.write_text(script)
    threads = connections if one_thread_per_connection else min(connections, 2)
    args = [
        wrk_binary(), f"--threads={threads}", f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s", "--timeout=30s", f"--script={lua}", url,
    ]  # fmt: skip
    env = {
        "WRK_BODY": str(body),
        "WRK_CONTENT_TYPE": content_type,
        "WRK_HEADER_LENGTH": "" if header_length is None else str(header_length),
        "WRK_HEADERS": "\n".join(f"{name}: {value}" for name, value in (headers or {}).items()),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        args, env=env, capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    data = json.loads(line.removeprefix("WRK_RESULT "))
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    return Cell(
        connections=connections,
        requests=data["requests"],
        completed=data["completed"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
    )

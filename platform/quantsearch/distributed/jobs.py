"""Ray Jobs: submit `quantsearch run JOB.yaml` to a cluster's Jobs API (its dashboard, `ray[default]`), follow,
list, inspect and stop jobs.

What travels with a submission (its runtime env): a working_dir holding only the job spec (`job.yaml`, overrides
applied), and env vars (`RAY_AUTH_MODE=disabled`, `MLFLOW_TRACKING_URI` when given, any `--env`). The package
itself does not travel: every node runs the same image (or venv) with quantsearch installed. Inside the job, Ray
sets `RAY_ADDRESS` to the cluster, so the stages' `ray.init` joins it instead of starting a local Ray.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quantsearch.errors import ConfigError, QuantsearchError

SPEC_FILE = "job.yaml"  # the spec's name in the uploaded working_dir
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


class JobsError(QuantsearchError):
    """The Ray Jobs API cannot be reached, or it refused a request (unknown id, ...)."""


@dataclass(frozen=True)
class JobRow:
    """One job as `jobs list` / `jobs status` show it."""

    submission_id: str
    job_id: str
    status: str
    entrypoint: str
    message: str
    start_time: float | None  # seconds since the epoch
    end_time: float | None
    metadata: dict[str, str]

    @property
    def seconds(self) -> float | None:
        """Wall time so far (or in all, once it ended)."""
        if self.start_time is None:
            return None
        return (self.end_time or time.time()) - self.start_time


def resolve_address(address: str | None) -> str:
    """--address, else RAY_JOBS_ADDRESS, else an http RAY_ADDRESS, else the local head's dashboard; a bare
    host:port gets http:// (the Jobs API speaks HTTP on the dashboard port, 8265 by default)."""
    addr = address or os.environ.get("RAY_JOBS_ADDRESS") or ""
    if not addr and os.environ.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        addr = os.environ["RAY_ADDRESS"]
    addr = addr or DEFAULT_ADDRESS
    if "://" not in addr:
        addr = f"http://{addr}"
    return addr.rstrip("/")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(address: str | None = None) -> Any:
    """A JobSubmissionClient on the cluster's Jobs API; one line naming the fix when it does not answer."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray >= 2.59: token auth unless disabled
    addr = resolve_address(address)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - ray[default] is a dependency
        raise JobsError(f"the Ray Jobs client needs ray[default] ({exc}); pip install 'ray[default]'") from exc
    try:
        return JobSubmissionClient(addr)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        raise JobsError(f"cannot reach the Ray Jobs API at {addr} ({_first_line(exc)}); start a head with "
                        "`ray start --head --include-dashboard true` (needs ray[default]) or pass --address "
                        "http://HEAD:8265") from exc


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A Jobs API request; a refusal (unknown id, server error) becomes one line."""
    try:
        return fn(*args, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        msg = _first_line(exc)
        if "Traceback (most recent call last)" in str(exc):  # the server's traceback: its last line says why
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and ln.strip() != "."]
            msg = lines[-1].rstrip(".") if lines else msg
        if "already exists" in msg:
            raise JobsError(f"{what}: {msg}; choose another --submission-id (or `quantsearch jobs status ID` for the "
                            "job that has it)") from exc
        if "does not exist" in msg or "404" in msg:
            raise JobsError(f"{what}: no such job on this cluster ({msg}); `quantsearch jobs list` shows the ids"
                            ) from exc
        raise JobsError(f"{what} failed: {msg}") from exc


def parse_env(items: list[str] | None) -> dict[str, str]:
    """--env KEY=VALUE pairs."""
    env: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE with KEY a variable name")
        env[key] = value
    return env


def entrypoint(python: str = "python") -> str:
    """The command the cluster runs: the job spec in the uploaded working_dir, through the installed package."""
    return f"{shlex.quote(python)} -m quantsearch run {SPEC_FILE}"


def runtime_env(working_dir: str | Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The submission's runtime env: the staged working_dir and env vars (auth off unless the caller says)."""
    return {"working_dir": str(working_dir), "env_vars": {"RAY_AUTH_MODE": "disabled", **env}}


def stage_spec(spec: Mapping[str, Any], folder: Path) -> Path:
    """Write the spec (a JSON-able dict) as `folder/job.yaml`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(yaml.safe_dump(dict(spec), sort_keys=False))
    return folder


def submit(spec: Mapping[str, Any], address: str | None = None, env: Mapping[str, str] | None = None,
           submission_id: str | None = None, python: str = "python", metadata: Mapping[str, str] | None = None,
           entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None) -> str:
    """Submit `quantsearch run` of `spec` (a validated spec's JSON dump) to the cluster; returns the submission id.

    `entrypoint_num_gpus` makes Ray run the driver on a node with that many GPUs (a cuda job on a GPU-less head)."""
    if submission_id is not None and not _ID.match(submission_id):
        raise ConfigError(f"--submission-id {submission_id!r}: use letters, digits, '.', '_' and '-'")
    client = connect(address)
    folder = Path(tempfile.mkdtemp(prefix="quantsearch-submit-"))
    try:
        stage_spec(spec, folder)
        return str(_call("submit", client.submit_job, entrypoint=entrypoint(python),
                         runtime_env=runtime_env(folder, env or {}), submission_id=submission_id,
                         metadata={"quantsearch.job": str(spec.get("name", "")), **(metadata or {})},
                         entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus))
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the client has packed and uploaded it


def _row(d: Any) -> JobRow:
    def sec(ms: Any) -> float | None:
        return None if not ms else float(ms) / 1000

    return JobRow(submission_id=str(d.submission_id or ""), job_id=str(d.job_id or ""), status=str(d.status),
                  entrypoint=str(d.entrypoint or ""), message=str(d.message or ""), start_time=sec(d.start_time),
                  end_time=sec(d.end_time), metadata=dict(d.metadata or {}))


def list_jobs(address: str | None = None) -> list[JobRow]:
    """Every job the cluster knows (submitted ones first, newest first)."""
    client = connect(address)
    rows = [_row(d) for d in _call("list jobs", client.list_jobs)]
    return sorted(rows, key=lambda r: (not r.submission_id, -(r.start_time or 0)))


def job_info(job_id: str, address: str | None = None, client: Any = None) -> JobRow:
    """One job's status, message and times."""
    client = client or connect(address)
    return _row(_call(f"job {job_id}", client.get_job_info, job_id))


def job_logs(job_id: str, address: str | None = None) -> str:
    """Everything the job's entrypoint has printed so far."""
    client = connect(address)
    return str(_call(f"logs of {job_id}", client.get_job_logs, job_id))


def follow(job_id: str, write: Callable[[str], Any], address: str | None = None, poll_s: float = 1.0) -> JobRow:
    """Stream the job's logs through `write` until it ends; returns its final state."""
    client = connect(address)
    info = job_info(job_id, client=client)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except (ConnectionError, RuntimeError, OSError) as exc:
        raise JobsError(f"following the logs of {job_id} failed: {_first_line(exc)}; `quantsearch jobs logs "
                        f"{job_id}` prints what it wrote") from exc
    # the log stream closes when the driver exits; the status may lag a moment behind
    info = job_info(job_id, client=client)
    while info.status not in TERMINAL:
        time.sleep(poll_s)
        info = job_info(job_id, client=client)
    return info


def wait(job_id: str, address: str | None = None, timeout_s: float | None = None, poll_s: float = 2.0) -> JobRow:
    """Poll until the job ends (or `timeout_s` passes: the last state seen)."""
    client = connect(address)
    t0 = time.monotonic()
    info = job_info(job_id, client=client)
    while info.status not in TERMINAL and (timeout_s is None or time.monotonic() - t0 < timeout_s):
        time.sleep(poll_s)
        info = job_info(job_id, client=client)
    return info


def stop(job_id: str, address: str | None = None) -> bool:
    """Ask the cluster to stop the job; False when it was not running."""
    client = connect(address)
    return bool(_call(f"stop {job_id}", client.stop_job, job_id))


__all__ = ["DEFAULT_ADDRESS", "SPEC_FILE", "TERMINAL", "JobRow", "JobsError", "connect", "entrypoint", "follow",
           "job_info", "job_logs", "list_jobs", "parse_env", "resolve_address", "runtime_env", "stage_spec", "stop",
           "submit", "wait"]

"""Fault injection: `quantsearch run` in a subprocess, killed (SIGKILL) at a file that marks progress, then rerun.

A tiny synthetic job (resnet8 on 16x16 images, one torch thread per process). One uninterrupted run is the
reference; each case checks the rerun resumed (what it printed, the stages it skipped) and ended where the
uninterrupted run ends. Every process runs under a deadline and is killed (its whole process group, and whatever
it started) when the test ends. The disk-full and read-only cases mount a private tmpfs in a mount namespace of
their own (`unshare -m`); they are skipped where that is not allowed, and the fast in-process tests at the end
check the same error paths (a failing write, a failed Ray Train run, a full disk under the CLI) anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from quantsearch.data.tables import read_rows
from quantsearch.space import SubnetConfig
from quantsearch.summary import read_statuses

from tests.integration.ray_cluster import _alive, _start_time, descendants, free_port

PY = sys.executable
EPOCHS = 4  # supernet epochs: a kill after the first checkpoint lands in a later epoch


def _env(**extra: str) -> dict[str, str]:
    """The CLI's environment: no outside Ray or MLflow, auth off, one thread per process (2 cores, shared)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_URI"))}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra})
    return env


class Cli:
    """One `quantsearch` process in a session (process group) of its own, with stdout/stderr in files."""

    def __init__(self, argv: list[str], logs: Path, env: dict[str, str] | None = None, raw: bool = False) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("*.out")))
        self.out, self.err = logs / f"{n}.out", logs / f"{n}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            cmd = argv if raw else [PY, "-m", "quantsearch", *argv]
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env or _env(), start_new_session=True)
        self.seen: dict[int, str | None] = {}

    def _remember(self) -> None:
        for pid in descendants(self.proc.pid):
            self.seen.setdefault(pid, _start_time(pid))

    def wait_for(self, what: str, ready: Callable[[], object], timeout: float) -> object:
        """Poll `ready()` until it returns something truthy; fail if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = ready()
            if got:
                return got
            if self.proc.poll() is not None:
                pytest.fail(f"quantsearch exited ({self.proc.returncode}) before {what}:\n{self.text()}")
            self._remember()
            time.sleep(0.02)
        pytest.fail(f"no {what} within {timeout:.0f} s:\n{self.text()}")

    def kill(self) -> None:
        """SIGKILL the process group (and anything it started that left it)."""
        self._remember()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for pid, started in self.seen.items():
            if _alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def finish(self, timeout: float) -> int:
        """Wait for the exit code (killing everything on timeout)."""
        deadline = time.monotonic() + timeout
        try:
            while self.proc.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"quantsearch did not finish within {timeout:.0f} s:\n{self.text()}")
                self._remember()
                time.sleep(0.1)
            return self.proc.returncode
        finally:
            self.kill()

    def text(self) -> str:
        return f"--- stdout\n{self.out.read_text()[-4000:]}\n--- stderr\n{self.err.read_text()[-4000:]}"

    def stdout(self) -> str:
        return self.out.read_text()

    def errors(self) -> list[str]:
        """The CLI's error lines (MLflow and Ray may log INFO lines to stderr too)."""
        return [ln for ln in self.err.read_text().splitlines() if ln.startswith("quantsearch: error:")]


def _job(folder: Path, out: Path, tracking: str, name: str = "faults", **sections: object) -> Path:
    """A tiny job spec file; `sections` add or replace top-level sections."""
    raw = {"name": name, "device": "cpu", "seed": 0, "output_dir": str(out), "tracking_uri": tracking,
           "data": {"name": "synthetic", "val_size": 64, "train_limit": 256, "test_limit": 128},
           "model": {"name": "resnet8"}, "training": {"epochs": 1, "batch_size": 64},
           "supernet": {"epochs": EPOCHS, "batch_size": 64, "train_images": 128, "calib_images": 64,
                        "bn_images": 64, "init_calibrator": "maxabs", "table_bits": [8]}, **sections}
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _history(out: Path) -> list[dict[str, float]]:
    return torch.load(out / "supernet" / "supernet.pt", weights_only=True)["history"]


def _same_training(got: list[dict[str, float]], ref: list[dict[str, float]], tol: float = 1e-3) -> None:
    """Per-epoch losses and max/min-subnet val accuracies equal within `tol` (timings aside): a resume restores
    weights, optimiser, schedule, sampler and generator, so on one machine it repeats the run to the bit."""
    assert [h["epoch"] for h in got] == [h["epoch"] for h in ref]
    for g, r in zip(got, ref, strict=True):
        for key in r:
            if key != "epoch_seconds":
                assert g[key] == pytest.approx(r[key], abs=tol), (key, g, r)


def _copy_done_stages(ref: Path, out: Path, *stages: str) -> None:
    """A run folder holding `stages` of the reference run, finished (their outputs and markers)."""
    for stage in stages:
        shutil.copytree(ref / stage, out / stage)
        (out / "stages").mkdir(parents=True, exist_ok=True)
        shutil.copy2(ref / "stages" / f"{stage}.json", out / "stages" / f"{stage}.json")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """An uninterrupted run of the job (fp32 + supernet), and the sqlite store the module's runs share."""
    root = tmp_path_factory.mktemp("faults")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "ref"
    cli = Cli(["run", str(_job(root, out, tracking))], root / "logs")
    assert cli.finish(300) == 0, cli.text()
    return root, out, tracking


@pytest.mark.slow
def test_killed_supernet_job_resumes_at_its_last_epoch(ref, tmp_path):
    _, ref_out, tracking = ref
    out = tmp_path / "killed"
    job = _job(tmp_path, out, tracking)
    cli = Cli(["run", str(job)], tmp_path / "logs")
    ckpt = out / "supernet" / "supernet.pt"
    try:
        cli.wait_for("a supernet epoch checkpoint", ckpt.is_file, 240)
    finally:
        cli.kill()
    done = len(_history(out))  # the checkpoint on disk (written atomically) when the job died
    assert 1 <= done < EPOCHS, f"the job finished {done} epochs before it was killed: nothing left to resume"
    assert not (out / "stages" / "supernet.json").exists()

    again = Cli(["run", str(job)], tmp_path / "logs")
    assert again.finish(240) == 0, again.text()
    text = again.stdout()
    assert "fp32: up to date" in text
    epochs = re.findall(r"supernet epoch (\d+)/(\d+)", text)
    assert epochs, text
    assert int(epochs[0][0]) == done + 1, text  # resumed after the last finished epoch
    assert read_statuses(out) == {"fp32": "skipped (up to date)", "supernet": "ran"}
    _same_training(_history(out), _history(ref_out))
    got, want = json.loads((out / "results.json").read_text()), json.loads((ref_out / "results.json").read_text())
    assert [r["stage"] for r in got] == [r["stage"] for r in want]
    for g, w in zip(got[1:], want[1:], strict=True):  # the supernet's uniform table
        assert g["val_acc"] == pytest.approx(w["val_acc"], abs=1e-3)
        assert g["test_acc"] == pytest.approx(w["test_acc"], abs=1e-3)


def _valid_table(path: Path) -> list[dict[str, object]]:
    """The measured table: readable, one row per config, every config parses, accuracies in [0, 1]."""
    rows = read_rows(path)
    configs = [SubnetConfig.from_json(r["config"]) for r in rows]
    assert len(set(configs)) == len(rows), "a config measured twice"
    for r in rows:
        assert 0.0 <= float(r["val_acc"]) <= 1.0
        assert math.isfinite(float(r["bitops"]))
        assert float(r["bitops"]) > 0
    return rows


@pytest.mark.slow
def test_killed_sampling_measures_only_what_is_missing(ref, tmp_path):
    _, ref_out, tracking = ref
    out = tmp_path / "sample"
    _copy_done_stages(ref_out, out, "fp32", "supernet")
    n = 40
    job = _job(tmp_path, out, tracking, sample={"subnets": n, "chunk": 4, "bn_images": 64, "forms": "first"})
    table = out / "sample" / "measured.parquet"
    cli = Cli(["run", str(job)], tmp_path / "logs")
    try:
        cli.wait_for("a measured chunk", table.is_file, 240)
    finally:
        cli.kill()
    before = _valid_table(table)
    assert 0 < len(before) < n, f"{len(before)} of {n} measured when killed: nothing left to measure"
    assert not (out / "stages" / "sample.json").exists()

    again = Cli(["run", str(job)], tmp_path / "logs")
    assert again.finish(240) == 0, again.text()
    assert read_statuses(out) == {"fp32": "skipped (up to date)", "supernet": "skipped (up to date)", "sample": "ran"}
    rows = json.loads((out / "results.json").read_text())
    assert rows[-1]["stage"] == f"sample: {n} subnets ({n - len(before)} new)"
    after = _valid_table(table)
    assert len(after) == n
    kept = {r["config"]: r for r in after}
    for r in before:  # what was measured before the kill is kept as it was, not measured again
        assert kept[r["config"]] == r


@pytest.mark.slow
def test_killed_search_resumes_from_its_archive(ref, tmp_path):
    _, ref_out, tracking = ref
    out = tmp_path / "search"
    _copy_done_stages(ref_out, out, "fp32", "supernet")
    gens = 6
    job = _job(tmp_path, out, tracking, sample={"subnets": 8, "chunk": 4, "bn_images": 64, "forms": "first"},
               search={"budget": {"bitops": "W4A4"}, "population": 8, "generations": gens, "finalists": 2,
                       "forms": "first", "fitness": "measured"})

    def archive() -> dict[str, object] | None:
        found = sorted((out / "search").glob("archive-*.json"))
        return json.loads(found[0].read_text()) if found else None  # written atomically: whole or absent

    cli = Cli(["run", str(job), "--only", "search"], tmp_path / "logs")
    try:
        cli.wait_for("a search generation in the archive", archive, 240)
    finally:
        cli.kill()
    killed = archive()
    assert killed is not None
    done = int(killed["generation"])
    assert 1 <= done < gens, f"the search finished {done} generations before it was killed"
    assert not (out / "search" / "best.json").exists()
    _valid_table(out / "sample" / "measured.parquet")

    again = Cli(["run", str(job), "--only", "search"], tmp_path / "logs")
    assert again.finish(240) == 0, again.text()
    shown = [int(g) for g in re.findall(r"search generation (\d+)/", again.stdout())]
    assert shown, again.stdout()
    assert shown[0] == done + 1, again.stdout()  # no generation of the killed run was searched again
    final = archive()
    assert final is not None
    assert int(final["generation"]) == shown[-1] > done
    # every genome the killed run evaluated is in the final archive, in order, with its fitness unchanged
    assert final["evaluated"][:len(killed["evaluated"])] == killed["evaluated"]
    assert json.loads((out / "search" / "best.json").read_text())["measured_val_acc"] >= 0
    _valid_table(out / "sample" / "measured.parquet")  # each config measured once, across the kill


def _ray_snapshot(storage: Path) -> dict[str, object] | None:
    """Ray Train's checkpoint-manager snapshot once it has registered a checkpoint (it writes it after each)."""
    path = storage / "checkpoint_manager_snapshot.json"
    try:
        snap = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return snap if snap.get("latest_checkpoint_result") else None


@pytest.mark.slow
@pytest.mark.ray
def test_killed_ray_train_worker_restarts_from_the_last_checkpoint(ref, tmp_path):
    _, ref_out, tracking = ref
    out = tmp_path / "ray"
    _copy_done_stages(ref_out, out, "fp32")
    job = _job(tmp_path, out, tracking, scaling={"workers": 1, "max_failures": 2, "run_name": "faults"})
    storage = out / "ray" / "faults"
    ray_tmp = Path(tempfile.mkdtemp(prefix="qsf", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    cli = Cli(["run", str(job)], tmp_path / "logs", env=_env(RAY_TMPDIR=str(ray_tmp)))
    try:
        snap = cli.wait_for("a registered Ray Train checkpoint", lambda: _ray_snapshot(storage), 300)
        latest = snap["latest_checkpoint_result"]  # type: ignore[index]
        first = int(latest["metrics"]["epoch"])
        workers = json.loads((storage / latest["checkpoint_dir_name"] / "workers.json").read_text())
        victim = workers[0]["pid"]
        assert "ray::" in Path(f"/proc/{victim}/cmdline").read_text(), "not a Ray Train worker"
        os.kill(victim, signal.SIGKILL)  # in the next epoch: the controller restarts the group from `first`
        code = cli.finish(300)
    finally:
        cli.kill()
        for proc in Path("/proc").iterdir():  # anything of the Ray this run started (its temp dir) still alive
            with contextlib.suppress(OSError, ValueError):
                if str(ray_tmp) in (proc / "cmdline").read_text():
                    os.kill(int(proc.name), signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 0, cli.text()
    assert 1 <= first < EPOCHS, f"the worker finished {first} epochs before it was killed"
    final = _ray_snapshot(storage)["latest_checkpoint_result"]["metrics"]  # type: ignore[index]
    assert final["epoch"] == EPOCHS
    assert final["resumed_from_epoch"] >= first  # the restarted worker group started from a checkpoint
    placed = json.loads((out / "supernet" / "workers.json").read_text())
    assert placed[0]["pid"] != victim  # a new worker finished the run
    _same_training(_history(out), _history(ref_out))


def _start_mlflow(db: Path, port: int, logs: Path) -> subprocess.Popen[bytes]:
    """An MLflow server (sqlite backend, proxied artifacts) on 127.0.0.1:port, once it answers /health."""
    proc = subprocess.Popen(
        [PY, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
         str(db.parent / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=(logs / "mlflow.log").open("ab"), stderr=subprocess.STDOUT, cwd=db.parent, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    _stop(proc)
    pytest.fail("the MLflow server did not start within 120 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the server and its workers (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class Gateway:
    """127.0.0.1:port forwarded to the MLflow server's port: `down()` closes the port and every connection through
    it (to its clients the server has stopped: connections are refused), `up()` opens it again (the server is
    back) without the minute an MLflow server takes to start here."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self.server: _Server | None = None
        self.conns: list[socket.socket] = []

    def up(self) -> None:
        gateway = self

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    upstream = socket.create_connection(("127.0.0.1", gateway.target))
                except OSError:
                    return
                gateway.conns += [self.request, upstream]
                other = {self.request: upstream, upstream: self.request}
                with contextlib.suppress(OSError, ValueError), upstream:
                    while True:
                        ready, _, _ = select.select(list(other), [], [], 1.0)
                        for sock in ready:
                            data = sock.recv(1 << 16)
                            if not data:
                                return
                            other[sock].sendall(data)

        self.server = _Server(("127.0.0.1", self.port), Pipe)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.conns.clear()


@pytest.mark.slow
@pytest.mark.mlflow
def test_mlflow_server_stopped_mid_run_keeps_the_results_and_names_log_run(ref, tmp_path):
    from mlflow.tracking import MlflowClient

    root, ref_out, _ = ref
    out = tmp_path / "tracked"
    _copy_done_stages(ref_out, out, "fp32")
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    shutil.copy2(root / "mlflow.db", server_dir / "mlflow.db")  # a store made already: the server starts sooner
    server_port = free_port()
    server = _start_mlflow(server_dir / "mlflow.db", server_port, tmp_path)
    gateway = Gateway(server_port)
    gateway.up()
    uri = f"http://127.0.0.1:{gateway.port}"
    job = _job(tmp_path, out, uri, name="faults-server")
    # fail fast once the server is gone (MLflow's default retries a refused connection for minutes)
    env = _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        cli = Cli(["run", str(job)], tmp_path / "logs", env=env)
        try:
            cli.wait_for("a supernet epoch checkpoint", (out / "supernet" / "supernet.pt").is_file, 240)
            gateway.down()  # the server stops mid-stage
            code = cli.finish(240)
        finally:
            cli.kill()
        assert code == 2, cli.text()
        errors = cli.errors()
        assert len(errors) == 1, cli.text()
        assert "Traceback" not in cli.err.read_text()
        assert "log-run" in errors[0]
        assert str(out) in errors[0]
        # the run finished on disk: every stage's outputs and markers, results and summary
        assert read_statuses(out) == {"fp32": "skipped (up to date)", "supernet": "ran"}
        assert (out / "stages" / "supernet.json").is_file()
        assert len(_history(out)) == EPOCHS
        assert json.loads((out / "results.json").read_text())[-1]["stage"].startswith("supernet")

        # the server back: the command the error names logs the finished folder
        gateway.up()
        command = re.search(r"`quantsearch (log-run [^`]+)`", errors[0])
        assert command, errors[0]
        relog = Cli(command.group(1).split(), tmp_path / "logs", env=env)
        assert relog.finish(180) == 0, relog.text()
        logged = re.search(r"as MLflow run (\w+)", relog.stdout())
        assert logged, relog.stdout()
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("faults-server").experiment_id])
        children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == logged.group(1)}
        assert {"fp32", "supernet"} <= set(children)
        assert children["supernet"].data.metrics, "the supernet stage logged no metrics"
    finally:
        gateway.down()
        _stop(server)


def _unshare_ok() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_mount = pytest.mark.skipif(not shutil.which("unshare") or not _unshare_ok(),
                                 reason="needs `unshare -m` and tmpfs mounts (root or CAP_SYS_ADMIN)")


def _run_on_tmpfs(ref_out: Path, tmp_path: Path, tracking: str, size_kb: int, read_only: bool) -> tuple[Cli, Path]:
    """Run the job (fp32 finished, from the reference) with its output folder on a private tmpfs of `size_kb`
    (remounted read-only first when asked); a copy of the folder as the run left it is returned."""
    mnt, snap = tmp_path / "mnt", tmp_path / "left"
    mnt.mkdir()
    stage = tmp_path / "seed"
    _copy_done_stages(ref_out, stage, "fp32")
    out = mnt / "run"
    job = _job(tmp_path, out, tracking)
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs {mnt} && cp -a {stage} {out} && "
              + (f"mount -o remount,ro {mnt} && " if read_only else "")
              + f'{PY} -m quantsearch run {job}; rc=$?; cp -a {out} {snap}; exit $rc')
    return Cli(["unshare", "-m", "sh", "-c", script], tmp_path / "logs", raw=True), snap


def _no_partial_files(folder: Path) -> list[Path]:
    """Every file under its final name is whole (loads); no temp file is left."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], files
    for p in files:
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".pt":
            torch.load(p, weights_only=True)
        elif p.suffix == ".parquet":
            read_rows(p)
    return files


def _one_line_exit_2(cli, timeout: float, *words: str) -> None:
    """The run ended with exit 2 and one error line (no traceback) holding every word."""
    assert cli.finish(timeout) == 2, cli.text()
    errors = cli.errors()
    assert len(errors) == 1, cli.text()
    assert "Traceback" not in cli.err.read_text()
    for word in words:
        assert word in errors[0], errors[0]


@pytest.mark.slow
@needs_mount
def test_disk_full_fails_with_one_line_and_no_partial_file(ref, tmp_path):
    _, ref_out, tracking = ref
    used = sum(p.stat().st_size for p in (ref_out / "fp32").rglob("*") if p.is_file())
    # room for the FP32 model and the small files, not for a supernet checkpoint
    cli, snap = _run_on_tmpfs(ref_out, tmp_path, tracking, used // 1024 + 256, read_only=False)
    _one_line_exit_2(cli, 240, "No space left on device", "output_dir", "rerun")
    files = _no_partial_files(snap)
    assert snap / "fp32" / "model.pt" in files  # what finished before is kept
    assert not (snap / "stages" / "supernet.json").exists()


@pytest.mark.slow
@needs_mount
def test_read_only_output_dir_fails_before_any_work(ref, tmp_path):
    _, ref_out, tracking = ref
    cli, snap = _run_on_tmpfs(ref_out, tmp_path, tracking, 4096, read_only=True)
    _one_line_exit_2(cli, 120, "not writable", "output_dir")
    before = sorted(p.relative_to(tmp_path / "seed") for p in (tmp_path / "seed").rglob("*"))
    assert sorted(p.relative_to(snap) for p in snap.rglob("*")) == before  # nothing written


class _FullDisk:
    """A file whose writes fail as a full disk (or a read-only folder) makes them fail."""

    def __init__(self, fh: object, code: int) -> None:
        self.fh, self.code = fh, code

    def write(self, data: bytes) -> int:
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name: str) -> object:
        return getattr(self.fh, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_write_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, code):
    """Where no tmpfs can be mounted, the same path in-process: every atomic writer (bytes, JSON, Parquet through
    bytes, torch checkpoints) turns the write failure into one OutputError line and removes its temp file."""
    from quantsearch._util import atomic_torch_save, atomic_write_bytes
    from quantsearch.errors import OutputError

    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: _FullDisk(real(fd, mode, *a, **k), code))
    for write, name in ((lambda p: atomic_write_bytes(p, b"x" * 4096), "table.parquet"),
                        (lambda p: atomic_torch_save(p, {"w": torch.zeros(4096)}), "supernet.pt")):
        with pytest.raises(OutputError) as info:
            write(tmp_path / "run" / name)
        msg = str(info.value)
        assert "\n" not in msg
        assert f"cannot write {tmp_path / 'run' / name}: {os.strerror(code)}" in msg
        assert "write elsewhere (output_dir, or --out)" in msg
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no temp file, nothing under a final name


def test_a_failed_ray_train_run_is_one_line(tmp_path):
    """Ray's WorkerGroupError spreads the worker's error over a traceback: the stage reports the worker's own user
    error as it is, else the failing rank's error in one line with where to look."""
    from quantsearch.distributed.train_supernet import ray_failure
    from quantsearch.errors import QuantsearchError, TrainingError
    from ray.train.v2.api.exceptions import WorkerGroupError

    nan = TrainingError("supernet loss became nan at epoch 2 step 3; lower supernet.lr and rerun")
    assert ray_failure(WorkerGroupError("Traceback ...", {0: nan}), tmp_path) is nan
    err = ray_failure(WorkerGroupError("Traceback ...", {1: ValueError("bad shape\n  more")}), tmp_path)
    assert isinstance(err, QuantsearchError)
    assert "\n" not in str(err)
    assert "rank 1: ValueError: bad shape" in str(err)
    assert str(tmp_path) in str(err)
    other = ray_failure(RuntimeError("\ncontroller lost\ndetails"), tmp_path)
    assert "RuntimeError: controller lost" in str(other)


def test_the_cli_reports_a_full_disk_in_any_writer_as_one_line(monkeypatch, capsys):
    """A library writing its own file (not through the atomic helpers) on a full disk: one line, exit 2; a
    permission error, which may come from a read, is not dressed up as a write failure."""
    from quantsearch import cli

    def full(args: object) -> int:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/plot.png")
        except OSError as exc:
            raise RuntimeError("writer failed") from exc

    monkeypatch.setattr(cli, "cmd_models_list", full)
    assert cli.main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert err == ("quantsearch: error: cannot write /runs/x/plot.png: No space left on device; free space there or "
                   "write elsewhere (output_dir, or --out), then rerun (finished stages are kept)\n")

    def denied(args: object) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/train.idx")

    monkeypatch.setattr(cli, "cmd_models_list", denied)
    with pytest.raises(PermissionError):
        cli.main(["models", "list"])

"""A real multi-node Ray cluster on 127.0.0.1 for tests: a head (with the dashboard, so the Jobs API) and worker
nodes, each `ray start --block` with its own temp dir, free ports and 1 CPU, in the venv's environment.

Stopping touches only what these `ray start` processes started: each is sent SIGTERM (Ray then drains and stops its
node's processes), and anything left of their process trees (raylet workers, job drivers) is killed by pid. Other
Ray instances on the machine are left alone (no `ray stop`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (by parent links, now)."""
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    """Running (not a zombie waiting to be reaped) and the same process (its start time), not a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and (started is None or fields[19] == started)


@dataclass
class LocalCluster:
    """Head + workers on this machine; `dashboard` is the Jobs API address, `gcs` what `ray start --address` and
    `ray.init` take."""

    root: Path
    gcs: str
    dashboard: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    seen: dict[int, str | None] = field(default_factory=dict)  # pid -> start time, of everything they started

    @staticmethod
    def env() -> dict[str, str]:
        """The nodes' environment: the venv first on PATH (so a job's `python` is this one), auth off."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_URI"))}
        env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})  # SIGTERM stops a node at once, no 30 s drain
        return env

    @classmethod
    def start(cls, workers: int = 1, cpus: int = 1, timeout_s: float = 120) -> LocalCluster:
        # short: Ray's unix sockets live under the temp dir, and their paths must stay under 108 bytes
        root = Path(tempfile.mkdtemp(prefix="qsr", dir="/tmp"))
        gcs_port, dash_port = free_port(), free_port()
        c = cls(root, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}")
        try:
            c._node(["--head", "--port", str(gcs_port), "--dashboard-port", str(dash_port), "--dashboard-host",
                     "127.0.0.1", "--include-dashboard", "true", "--ray-client-server-port", str(free_port())],
                    "head", cpus)
            c._wait_http(c.dashboard + "/api/version", timeout_s)
            for i in range(workers):
                c._node(["--address", c.gcs], f"w{i}", cpus)
            c._wait_nodes(1 + workers, timeout_s)
        except BaseException:
            c.stop()
            raise
        return c

    def _node(self, args: list[str], name: str, cpus: int) -> None:
        temp = self.root / name
        temp.mkdir()
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the node
        ports = ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                 "--runtime-env-agent-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                 "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
        cmd = [str(BIN / "ray"), "start", *args, "--num-cpus", str(cpus), "--num-gpus", "0", "--temp-dir", str(temp),
               "--object-store-memory", str(100 * 1024 * 1024), "--node-ip-address", "127.0.0.1",
               "--disable-usage-stats", "--block", *ports]
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                           start_new_session=True))

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                logs = "\n".join(f.read_text()[-3000:] for f in sorted(self.root.glob("*.log")))
                raise RuntimeError(f"`ray start` exited with {p.returncode}:\n{logs}")

    def _wait_http(self, url: str, timeout_s: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")

    def node_ids(self) -> set[str]:
        """The alive nodes' ids, from the dashboard's state API."""
        from ray.util.state import list_nodes

        return {n.node_id for n in list_nodes(address=self.dashboard) if n.state == "ALIVE"}

    def _wait_nodes(self, n: int, timeout_s: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            self._check_alive()
            try:
                if len(self.node_ids()) >= n:
                    return
            except Exception:  # the state API answers once the dashboard is fully up
                pass
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes did not join within {timeout_s:.0f}s")

    def remember(self) -> None:
        """Note every process the nodes have started so far (workers, drivers), to kill what outlives them."""
        for p in self.procs:
            for pid in descendants(p.pid):
                self.seen.setdefault(pid, _start_time(pid))

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM each `ray start --block` (workers first), then kill whatever they started that is still alive."""
        self.remember()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid, t) for pid, t in self.seen.items()):
            time.sleep(0.5)
        for pid, started in self.seen.items():
            if _alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not self.leftovers():
            shutil.rmtree(self.root, ignore_errors=True)  # the nodes' temp dirs, sessions and logs

    def leftovers(self) -> list[int]:
        """Processes the nodes started that are still alive."""
        return [pid for pid, t in self.seen.items() if _alive(pid, t)] + [p.pid for p in self.procs
                                                                          if p.poll() is None]

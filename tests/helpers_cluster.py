"""A real multi-node Ray cluster on 127.0.0.1 and a real MLflow server, for the multi-node tests.

Everything here is started as child processes in sessions of their own and stopped by killing exactly
those sessions (and their process trees): never `ray stop`, which kills every Ray instance on the machine,
including ones other tests or other users run. Ports are free ports picked at start, every node gets the
cluster's own temp dir (short, under /tmp: Ray's Unix sockets must fit in 107 bytes) and the cluster its own
auth token file, so nothing touches /tmp/ray or ~/.ray.

Ray 2.59+ token auth: `ray start --head` turns token auth on when a token exists; the CLI, the raylets
and every driver then need RAY_AUTH_MODE=token and the token. `LocalRayCluster.env` carries both
(RAY_AUTH_TOKEN_PATH points at the cluster's token file): pass it to every subprocess that talks to the
cluster.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import secrets
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
from typing import Optional

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
MLFLOW = str(VENV_BIN / "mlflow")


_HANDED_OUT: set[int] = set()


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together so they differ) and never handed
    out before in this process: a server that has not bound its port yet (the MLflow server takes ~13 s) must
    not see it given to a Ray node too (seen: the metrics exporter answered the MLflow URI)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                ports.append(port)
        _HANDED_OUT.update(ports)
        return ports
    finally:
        for s in socks:
            s.close()


def run_ranks(target, *args, world: int = 2, join_s: float = 60) -> list[tuple]:
    """Run ``target(rank, port, *args, results)`` in ``world`` spawned processes: the ranks of one process group
    on a free 127.0.0.1 port. Returns the tuple each put on ``results``, sorted (each starts with its rank)."""
    import torch.multiprocessing as mp  # torch: only for the tests that spawn ranks

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    port = free_ports(1)[0]
    procs = [ctx.Process(target=target, args=(rank, port, *args, results)) for rank in range(world)]
    for proc in procs:
        proc.start()
    outcome = sorted(results.get() for _ in procs)
    for proc in procs:
        proc.join(join_s)
    return outcome


# ---------------------------------------------------------------------------------------------- processes

def _stat(pid: int) -> Optional[tuple[int, int, int]]:
    """(ppid, pgid, sid) of a live process, None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[2]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def process_tree(root: int) -> set[int]:
    """``root``, its descendants, and every process of the session ``root`` leads (children of a killed
    parent are re-parented to init, but keep their session)."""
    table = {pid: st for pid in _all_pids() if (st := _stat(pid)) is not None}
    found = {root} if root in table else set()
    found |= {pid for pid, (_, _, sid) in table.items() if sid == root}
    grew = True
    while grew:
        new = {pid for pid, (ppid, _, _) in table.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return found


def kill_tree(root: int, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Stop ``root``'s process tree and session: ``sig`` first, SIGKILL whatever is left after ``grace`` s."""
    pids = process_tree(root)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + (grace if sig != signal.SIGKILL else 2.0)
    while time.monotonic() < deadline:
        pids = {p for p in pids | process_tree(root) if _stat(p) is not None}
        if not pids:
            return
        time.sleep(0.2)
    for pid in pids | process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_names(root: int) -> dict[int, str]:
    """pid -> command name (as `ps` shows it: Ray workers rename themselves `ray::...`) of ``root``'s tree."""
    out = {}
    for pid in process_tree(root):
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return out


def listening_addresses(root: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket a process of ``root``'s tree listens on ("::"/"0.0.0.0": all interfaces)."""
    import psutil

    pids = process_tree(root)
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


# ------------------------------------------------------------------------------------------------- Ray

_NODES_SCRIPT = r"""
import json, sys
from ray._raylet import GcsClient
from ray.core.generated import gcs_pb2
c = GcsClient(address=sys.argv[1])
out = []
for node_id, info in c.get_all_node_info(timeout=10).items():
    out.append({"node_id": node_id.hex(), "alive": info.state == gcs_pb2.GcsNodeInfo.ALIVE,
                "head": bool(info.is_head_node), "resources": dict(info.resources_total)})
print(json.dumps(out))
"""


@dataclass
class RayNode:
    role: str  # "head" or "worker"
    proc: subprocess.Popen
    log: Path
    resources: dict
    node_id: str = ""
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class LocalRayCluster:
    """Ray nodes started with `ray start --block` (one session each) on 127.0.0.1, all under ``base``."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tsr-", dir="/tmp")))
    nodes: list = field(default_factory=list)
    port: int = 0
    dashboard_port: int = 0

    def __post_init__(self):
        self.temp_dir = self.base / "ray"
        self.token_path = self.base / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.env = dict(os.environ)
        for k in [k for k in self.env if k.startswith("RAY_")]:
            del self.env[k]  # an outer RAY_ADDRESS must not redirect anything started here
        self.env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0",
            # Declare a lost node dead after ~3 s instead of ~30 s (a killed raylet drops its connections).
            RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
            RAY_health_check_timeout_ms="1000", RAY_health_check_initial_delay_ms="1000",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self._stopped = False
        atexit.register(self.shutdown)  # a safety net: fixtures stop the cluster, even when a test fails

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, role: str, num_cpus: int, resources: dict, extra: list[str]) -> RayNode:
        n = len(self.nodes)
        log = self.base / f"node{n}-{role}.log"
        # Every port Ray would otherwise take from a fixed default (the client server's 10001, the agent's
        # 52365, the 10002-19999 worker range...) is a free port of ours: other Rays on this machine keep theirs.
        nm, om, agent_http, agent_grpc, renv, metrics, wmin = free_ports(7)
        cmd = [RAY, "start", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0",
               f"--resources={json.dumps(resources)}", f"--temp-dir={self.temp_dir}",
               f"--node-manager-port={nm}", f"--object-manager-port={om}",
               f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={renv}", f"--metrics-export-port={metrics}",
               "--min-worker-port=0", "--max-worker-port=0",
               f"--object-store-memory={150 * 1024 * 1024}", "--disable-usage-stats", *extra]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, cwd=self.base, start_new_session=True)
        node = RayNode(role, proc, log, resources)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1, resources: Optional[dict] = None, timeout: float = 90) -> RayNode:
        self.port, self.dashboard_port, client = free_ports(3)
        node = self._start("head", num_cpus, resources or {"head_node": 1}, [
            "--head", f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={client}"])
        self.wait_nodes(1, timeout, node)
        return node

    def add_worker(self, num_cpus: int = 1, resources: Optional[dict] = None, timeout: float = 90) -> RayNode:
        alive = sum(1 for n in self.nodes if not n.killed)
        node = self._start("worker", num_cpus, resources or {"worker_node": 1}, [f"--address={self.address}"])
        self.wait_nodes(alive + 1, timeout, node)
        return node

    def node_table(self) -> list[dict]:
        """Every node the GCS knows: node_id (hex), alive, head, resources."""
        r = subprocess.run([sys.executable, "-c", _NODES_SCRIPT, self.address], env=self.env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise RuntimeError(f"cannot list the nodes of {self.address}: {r.stderr.strip()[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def wait_nodes(self, count: int, timeout: float, starting: Optional[RayNode] = None) -> list[dict]:
        """Wait until ``count`` nodes are alive; name the node just started by its unique custom resource."""
        deadline = time.monotonic() + timeout
        table: list[dict] = []
        while starting is not None and time.monotonic() < deadline:  # cheap: no Python start-up per poll
            if starting.proc.poll() is not None:
                raise RuntimeError(f"ray start ({starting.role}) exited with {starting.proc.returncode}:\n"
                                   + starting.log.read_text(errors="replace")[-3000:])
            if b"Ray runtime started" in starting.log.read_bytes():
                break
            time.sleep(0.3)
        while time.monotonic() < deadline:
            try:
                table = self.node_table()
            except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError):
                table = []
            alive = [t for t in table if t["alive"]]
            if len(alive) >= count:
                self._name_nodes(alive)
                return alive
            time.sleep(1.0)
        raise TimeoutError(f"{len(table)} node(s) of {count} came up within {timeout:g} s; logs in {self.base}")

    def _name_nodes(self, alive: list[dict]) -> None:
        for node in self.nodes:
            if node.node_id:
                continue
            for t in alive:
                if all(t["resources"].get(k) == v for k, v in node.resources.items()):
                    node.node_id = t["node_id"]

    def wait_node_dead(self, node: RayNode, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(t["node_id"] == node.node_id and t["alive"] for t in self.node_table()):
                return
            time.sleep(1.0)
        raise TimeoutError(f"node {node.node_id} still alive after {timeout:g} s")

    def kill_node(self, node: RayNode) -> None:
        """The node's machine dies: SIGKILL its raylet, workers, agents and `ray start` at once."""
        kill_tree(node.pid, signal.SIGKILL)
        node.killed = True

    def shutdown(self, keep_logs_in: Optional[Path] = None) -> None:
        """Stop every node started here (workers first) and remove the cluster's files. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for node in reversed(self.nodes):
            if not node.killed:
                kill_tree(node.pid, signal.SIGTERM, grace=3)
            try:
                node.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if keep_logs_in is not None:
            keep_logs_in.mkdir(parents=True, exist_ok=True)
            for log in self.base.glob("*.log"):
                shutil.copy(log, keep_logs_in / log.name)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


# ---------------------------------------------------------------------------------------------- MLflow

class MLflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and one worker (start() returns at once;
    wait_healthy() polls /health, ~13 s on 2 cores)."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.log = self.base / "mlflow-server.log"
        self.proc: Optional[subprocess.Popen] = None
        atexit.register(self.stop)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MLflowServer":
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.base / 'mlflow.db'}",
               "--default-artifact-root", str(self.base / "artifacts"), "-w", "1"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.base, start_new_session=True)
        return self

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n"
                                   + self.log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    body = r.read(64)
                if body.strip() == b"OK":
                    return
                raise RuntimeError(f"{self.uri}/health is not MLflow's (answered {body[:40]!r}): "
                                   "another service has the port")
            except (OSError, http.client.HTTPException):  # not up yet, or (BadStatusLine) another service's port
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not healthy after {timeout:g} s; see {self.log}")

    def stop(self) -> None:
        """Stop the server's process tree. Idempotent."""
        if self.proc is not None and self.proc.returncode is None:
            kill_tree(self.proc.pid, signal.SIGTERM, grace=5)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

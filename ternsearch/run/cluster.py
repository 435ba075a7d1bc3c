"""The Ray cluster a sweep runs on: started (or joined), and its nodes, those its autoscaler may add included."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

from ternsearch.errors import UsageError
from ternsearch.spec.uris import check_ray_address, split_host_port
from ternsearch.tracking.net import connect_problem

__all__ = ["Nodes", "BOOTSTRAP_CONFIG", "start_cluster", "autoscaler_nodes", "launcher_nodes", "total_resources",
           "auto_address", "env_address", "check_cluster"]

Nodes = list[tuple[dict[str, float], int]]  # (resources of a node, how many such nodes)

# Where the Ray cluster launcher (`ray up`) leaves the cluster's config on the head node; its autoscaler reads it.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def autoscaler_nodes(bootstrap: str = BOOTSTRAP_CONFIG) -> Optional[Nodes]:
    """Every node the cluster's autoscaler may run at once (head included), or None without an autoscaler.

    From the config the autoscaler publishes in the GCS (KubeRay, autoscaler v2), else from the cluster
    launcher's config on the head. A cluster with `min_workers: 0` GPU nodes has no GPU until a trial asks
    for one: the plan and the checks must count the nodes it can add, not only those up now.
    """
    try:
        # Ray: only once the sweep has joined a cluster (its checks before then stay free of it)
        from ray._private.state import state

        config = state.get_cluster_config()  # private API (checked against ray 2.60)
    except Exception:  # not connected, or not published
        config = None
    if config is not None and config.node_group_configs:
        return [({k: float(v) for k, v in g.resources.items()}, g.max_count if g.max_count >= 0 else 1000)
                for g in config.node_group_configs if g.resources and g.max_count != 0] or None
    return launcher_nodes(bootstrap)


def launcher_nodes(path: str) -> Optional[Nodes]:
    """The nodes a cluster-launcher config (cluster.yaml, or ~/ray_bootstrap_config.yaml on the head) may run
    at once: the head plus each worker type's max_workers (capped by the top-level max_workers)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        types = doc.get("available_node_types") or {}
        head_type, cap = doc.get("head_node_type"), int(doc.get("max_workers", 1000))
        nodes = []
        for name, t in types.items():
            res = {k: float(v) for k, v in (t.get("resources") or {}).items()}
            count = min(int(t.get("max_workers", 0)), cap) + (name == head_type)
            if res and count:
                nodes.append((res, count))
        return nodes or None
    except Exception:  # a config we cannot read: plan with the live nodes
        return None


def auto_address() -> tuple[Optional[str], str]:
    """``(the address --address auto stands for, or None, where it comes from)``, found as ``ray.init`` finds it
    (ray 2.60, ``ray._private.services.get_ray_address_from_environment``): ``$RAY_ADDRESS``, else the cluster the
    latest ``ray start`` on this machine recorded in ``<Ray's temp dir>/ray/ray_current_cluster`` (Ray's temp dir:
    ``$RAY_TMPDIR``, on Linux ``$TMPDIR``, else /tmp). Ray's last resort, a GCS process found in ``ps`` (a
    cluster some other program's ``ray.init`` started), is not tried: that one is not for a sweep to join."""
    env = os.environ.get("RAY_ADDRESS")
    if env and env != "auto":
        return env, "$RAY_ADDRESS"
    temp = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    recorded = Path(temp or "/tmp") / "ray" / "ray_current_cluster"
    try:
        return recorded.read_text().strip() or None, str(recorded)
    except OSError:
        return None, str(recorded)


def env_address() -> tuple[Optional[str], Optional[str]]:
    """``(address, how to name it)`` of the cluster ``ray.init(address=None)`` joins by itself: ``$RAY_ADDRESS``
    when set (and not ``local``, Ray's word for a new local instance), else ``(None, None)``."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if not env or env == "local":
        return None, None
    return env, f"$RAY_ADDRESS={shlex.quote(env)}"


def check_cluster(address: str, timeout: float = 5.0, shown: Optional[str] = None) -> None:
    """A Ray cluster's head must accept a connection at ``address`` (``auto``: see ``auto_address``) within
    ``timeout`` seconds, and its GCS answer one request within 8 more: ``ray.init`` itself waits for minutes on
    one that is not there (and for 20 s on a server that is not Ray's). ``shown`` names where the address came
    from (default ``--address ADDRESS``; ``$RAY_ADDRESS=...`` for the environment's).

    Raises:
        UsageError: one line naming ``--address`` (or ``$RAY_ADDRESS``), why, and what to do.
    """
    from_env = shown is not None
    given, shown = address, shown or f"--address {shlex.quote(address)}"
    todo = ("start one with ray start --head, or unset RAY_ADDRESS for a local Ray" if from_env else
            "start one with ray start --head, or leave --address out for a local Ray")
    if address == "auto":
        found, source = auto_address()
        if found is None:
            raise UsageError(f"{shown}: no Ray cluster runs on this machine (none recorded in {source}; "
                             f"{todo}, or give HOST:PORT of a head)")
        shown, address = f"{shown} ({shlex.quote(found)}, from {source})", found
    why = check_ray_address(address)
    if why:
        raise UsageError(f"{shown}: {why}")
    host, port = split_host_port(address)
    problem = connect_problem(host, port, timeout)
    if problem is None:
        problem = _gcs_problem(address, given, 8.0)  # with the connection's 5 s: within 15 s in all
    if problem is None:
        return
    if problem.startswith("the cluster there"):
        raise UsageError(f"{shown}: {problem}")
    detail = "" if problem == "nothing listens there" else f"{problem}; "
    raise UsageError(f"{shown}: no Ray cluster is listening there ({detail}{todo})")


# One request to the cluster's GCS, in a process of its own: Ray's client logs its failures to the file descriptor
# of stderr, and ray.init would retry for 20 s and more. Token authentication as ray.init would use it (ray 2.60,
# ray._private.worker.init): an explicit address only with RAY_AUTH_MODE=token, auto with a token file too.
_GCS_PROBE = """import sys
try:
    from ray._raylet import GcsClient
    if sys.argv[2] == "auto":
        from ray._private.authentication.authentication_token_setup import \\
            maybe_enable_token_auth_if_token_available
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
except (ImportError, AttributeError):
    sys.exit(3)  # private APIs of another Ray version: ray.init will tell
GcsClient(address=sys.argv[1]).cluster_id
"""
_PROBE_CANNOT_TELL = 3


def _gcs_problem(address: str, given: str, timeout: float) -> Optional[str]:
    """None when a Ray GCS answers at ``address`` (``given`` as ``--address``) within ``timeout`` seconds, else
    why not: something else accepted the connection (another server, a proxy), or the cluster wants a token."""
    try:
        proc = subprocess.run([sys.executable, "-c", _GCS_PROBE, address, given], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"it accepts connections but no Ray GCS answered within {timeout:g} s"
    if proc.returncode in (0, _PROBE_CANNOT_TELL):
        return None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else "no answer"
    if "AuthenticationError" in last:
        return ("the cluster there uses token authentication and refused this process (set RAY_AUTH_MODE=token, "
                "and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token)")
    return f"it accepts connections but is not a Ray GCS: {last[:160]}"


def start_cluster(address: Optional[str], dashboard: bool = True,
                  verbose: bool = True) -> tuple[dict[str, float], Nodes]:
    """The cluster's resources, all nodes together, and node by node (nodes its autoscaler may add included).

    A local Ray (no ``address``) is started with its dashboard on loopback only when ``dashboard`` is true: Ray
    Train V2 polls the State API the dashboard serves, but trials that run in their Tune process do not, and the
    dashboard's processes cost about a second of start-up on 2 cores (benchmarks/sweep_overhead.py)."""
    # Ray takes seconds to import: the sweep's checks and `--dry-run` without --address run before it
    import ray

    kwargs = {}
    if address is None:
        kwargs = ({"include_dashboard": True, "dashboard_host": "127.0.0.1"} if dashboard
                  else {"include_dashboard": False})
    # Not verbose: trials' own output stays in their log files under Ray's session directory.
    try:
        ray.init(address=address, ignore_reinit_error=True, configure_logging=True,
                 logging_level="WARNING" if verbose else "ERROR", log_to_driver=verbose, **kwargs)
    except ConnectionError as exc:  # a cluster check_cluster found, gone since, or one that does not let us in
        if address is None:
            raise
        raise UsageError(f"--address {shlex.quote(address)}: Ray could not join the cluster there "
                         f"({' '.join(str(exc).split())[:200]})") from None
    nodes: Nodes = [({k: float(v) for k, v in n["Resources"].items()}, 1) for n in ray.nodes() if n.get("Alive")]
    if address is not None:
        scaled = autoscaler_nodes()
        if scaled and sum(c for _, c in scaled) >= len(nodes):
            nodes = scaled
    return total_resources(nodes), nodes


def total_resources(nodes: Nodes) -> dict[str, float]:
    """All nodes' resources added up."""
    total: dict[str, float] = {}
    for res, count in nodes:
        for k, v in res.items():
            total[k] = total.get(k, 0.0) + v * count
    return total

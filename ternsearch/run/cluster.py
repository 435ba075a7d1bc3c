"""The Ray cluster a sweep runs on: started (or joined), and its nodes, those its autoscaler may add included."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

__all__ = ["Nodes", "BOOTSTRAP_CONFIG", "start_cluster", "autoscaler_nodes", "launcher_nodes", "total_resources"]

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
    ray.init(address=address, ignore_reinit_error=True, configure_logging=True,
             logging_level="WARNING" if verbose else "ERROR", log_to_driver=verbose, **kwargs)
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

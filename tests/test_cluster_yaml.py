"""cluster.yaml is a valid Ray cluster-launcher config for the installed Ray, and agrees with the versions this
package pins and with the sweep file meant for it (search_spaces/cifar10.yaml). Starts nothing."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    """name -> exact version (==) of the dependencies pyproject.toml pins exactly; ray's spec as written."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$", dep)
        name, spec = m.group(1).lower(), m.group(3).strip()
        out[name] = spec[2:].strip() if spec.startswith("==") else spec
    return out


def _validate(config: dict) -> None:
    # What `ray up` does before it starts anything (there is no dry-run): fill in the provider's defaults,
    # then check against ray/autoscaler/ray-schema.json.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_valid_against_rays_own_schema(cfg):
    _validate(cfg)


def test_the_schema_check_is_strict(cfg):
    import jsonschema

    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 0  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)


def test_ray_version_matches_installed_and_pinned(cfg, pins):
    import ray

    installed = ray.__version__
    image = cfg["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray:(?P<ver>[0-9.]+)-(?P<py>py3\d+)-(?P<cuda>cu\d+|gpu)", image)
    assert m, f"{image}: expected rayproject/ray:<version>-py311-<cuXXX|gpu> (ray-ml images are discontinued)"
    assert m["py"] == "py311", image
    assert m["ver"] == installed, f"the image runs Ray {m['ver']}, this venv Ray {installed}"
    # pyproject.toml pins ray exactly, or (">=" only) the installed version is the pin: every node must run
    # the very Ray of the driver that submits to it.
    pinned = pins["ray"]
    if re.fullmatch(r"[0-9.]+", pinned):
        assert pinned == installed == m["ver"]
    setup = "\n".join(cfg["setup_commands"])
    held = re.findall(r"ray\[[^\]]*\]==([0-9.]+)", setup)
    assert held == [installed], f"setup_commands must hold Ray at {installed} (found {held})"


def test_setup_installs_the_package_and_pinned_torch(cfg, pins):
    setup = "\n".join(cfg["setup_commands"])
    for name in ("torch", "torchvision"):
        assert re.search(rf'"{name}=={re.escape(pins[name])}"', setup), f"{name}=={pins[name]} not in setup_commands"
    assert "~/ternsearch" in setup
    assert cfg["file_mounts"].get("~/ternsearch") == "."
    assert cfg["file_mounts"].get("~/search_spaces") == "./search_spaces"
    assert (REPO / "search_spaces").is_dir()


def test_cpu_head_and_spot_gpu_workers(cfg):
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("driver", 0) > 0
    assert "InstanceMarketOptions" not in head["node_config"]  # on-demand: it runs the drivers
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers
    for t in workers:
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert t["min_workers"] == 0 and t["max_workers"] >= 1
        assert t["resources"]["GPU"] >= 1
        assert "driver" not in t["resources"]


def test_cifar10_sweep_file_fits_this_cluster(cfg):
    """search_spaces/cifar10.yaml is the sweep for this cluster: its driver resource is the head's, its
    tracking server is the one the head starts, and a trial fits the cluster at full size."""
    from ternsearch.spec import load_spec
    from ternsearch.run.cluster import launcher_nodes, total_resources
    from ternsearch.run.tuner import make_plan

    spec = load_spec(REPO / "search_spaces" / "cifar10.yaml")
    head = cfg["available_node_types"][cfg["head_node_type"]]["resources"]
    assert set(spec.resources.driver_resources) <= set(head)
    port = spec.tracking.uri.rsplit(":", 1)[1].strip("/")
    assert any("mlflow server" in c and f"--port {port}" in c for c in cfg["head_start_ray_commands"])
    assert "://" in spec.storage.path or spec.storage.shared

    # The plan counts the nodes the autoscaler may add (there are no GPU nodes before the first trial):
    # on the head, ~/ray_bootstrap_config.yaml is this file as `ray up` filled it in.
    nodes = launcher_nodes(str(REPO / "cluster.yaml"))
    assert nodes is not None
    cluster = total_resources(nodes)
    assert cluster["GPU"] == sum(t["resources"].get("GPU", 0) * min(t.get("max_workers", 0), cfg["max_workers"])
                                 for t in cfg["available_node_types"].values())
    plan = make_plan(spec, cluster, nodes)
    assert plan.use_gpu and plan.mode == "torchtrainer"
    assert 1 <= plan.max_concurrent <= spec.searcher.max_concurrent_trials

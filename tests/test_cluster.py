"""Clusters for real: code shipped to nodes that lack rnnsweep, `ray job submit`, the
cluster config, and one-line refusals. The slow tests run a cluster of two `ray start`
nodes on 127.0.0.1 (tests/loopback_cluster.py): a head whose venv has rnnsweep's
dependencies but not rnnsweep (where `ray job submit` runs the driver), and a node whose
venv holds only torch and Ray, as a stock GPU image does."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli, toy
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from rnnsweep.sweep import shipping

TRAIN = toy("workload=train", "hardware=cpu", "hardware.num_cpus=1")


# --- what travels (no Ray) ----------------------------------------------------------------


def _ray_cfg(**ray):
    return OmegaConf.create({"ray": {"ship": True, "packages": [], "working_dir": None, **ray}})


def test_runtime_env_ships_rnnsweep_its_plugins_and_what_trials_import(tmp_path):
    env = shipping.runtime_env_for(_ray_cfg())
    modules = [Path(m) for m in env["py_modules"]]
    assert modules[0] == REPO / "rnnsweep"
    assert modules[1].name == "hydra_plugins"
    ours = {p.name for p in (REPO / "hydra_plugins").iterdir() if p.name.startswith("rnnsweep_")}
    assert "rnnsweep_launcher" in ours
    assert {p.name for p in modules[1].iterdir()} - {"__pycache__"} == ours
    # What trials import beyond torch and Ray: the driver's own installed copies.
    import hydra
    import omegaconf

    shipped = {m.name: m for m in modules[2:]}
    assert {"hydra", "omegaconf", "antlr4"} <= set(shipped)
    for module in (hydra, omegaconf):
        installed = Path(module.__file__).parent
        assert (shipped[module.__name__] / "__init__.py").read_bytes() == (
            installed / "__init__.py").read_bytes()
    # Hydra's wheel has a .gitignore naming its generated parsers, which Ray would leave
    # behind: the staged copy has none, and has the parsers.
    assert (installed_gen := Path(hydra.__file__).parent / "grammar" / "gen").is_dir()
    assert not list(shipped["hydra"].rglob(".gitignore"))
    assert {p.name for p in (shipped["hydra"] / "grammar" / "gen").glob("*.py")} == {
        p.name for p in installed_gen.glob("*.py")}
    # ...and nothing a node with torch and ray[default] has already.
    assert not {"yaml", "ray", "torch", "packaging", "mlflow"} & set(shipped)
    assert "working_dir" not in env and "mlflow.db" in env["excludes"]
    assert shipping.runtime_env_for(_ray_cfg(ship=False)) is None


def test_runtime_env_ships_named_packages_and_a_working_dir(tmp_path, monkeypatch):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = shipping.runtime_env_for(_ray_cfg(packages=["userpkg"], working_dir=str(tmp_path)))
    assert env["py_modules"][-1] == str(tmp_path / "userpkg")
    assert env["working_dir"] == str(tmp_path)
    with pytest.raises(shipping.ShippingError, match="cannot import 'nosuchpkg'"):
        shipping.runtime_env_for(_ray_cfg(packages=["nosuchpkg"]))
    with pytest.raises(shipping.ShippingError, match="ray.working_dir=.*not a directory"):
        shipping.runtime_env_for(_ray_cfg(working_dir=str(tmp_path / "none")))


def test_inside_a_submitted_job_the_jobs_own_code_is_kept(monkeypatch, tmp_path):
    # The job's working dir wins; the modules (Hydra, OmegaConf: not in it) still travel.
    monkeypatch.setenv(shipping.JOB_CONFIG_ENV, '{"runtime_env": {"working_dir": "gcs://x"}}')
    env = shipping.runtime_env_for(_ray_cfg(working_dir=str(tmp_path)))
    assert "working_dir" not in env
    assert "hydra" in {Path(m).name for m in env["py_modules"]}
    # A job that chose its own py_modules gets nothing added (Ray refuses a key twice).
    monkeypatch.setenv(shipping.JOB_CONFIG_ENV, '{"runtime_env": {"py_modules": ["gcs://y"]}}')
    assert shipping.runtime_env_for(_ray_cfg()) is None
    monkeypatch.setenv(shipping.JOB_CONFIG_ENV, '{"runtime_env": {}}')
    assert shipping.runtime_env_for(_ray_cfg(working_dir=str(tmp_path)))["working_dir"]


def test_cluster_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "examples" / "cluster" / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["provider"]["type"] == "local"
    assert "--gpus all" in config["docker"]["run_options"]
    config["dockr"] = config.pop("docker")  # a typo: the schema must catch it
    with pytest.raises(Exception, match="dockr"):
        validate_config(prepare_config(config))


def test_dockerfile_builds_on_cuda_and_installs_rnnsweep():
    text = (REPO / "examples" / "cluster" / "Dockerfile").read_text()
    assert text.count("FROM nvidia/cuda:") == 1
    assert 'pip install ".[export]"' in text and "--index-url https://download.pytorch.org" \
        in text


# --- a real two-node cluster --------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    from loopback_cluster import remove, start_cluster

    started = start_cluster([{"num_cpus": 2}, {"num_cpus": 2, "venv": "bare"}], dashboard=True)
    yield started
    remove(started)


def _child_runs(db: Path) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("rnnsweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return [r for r in runs if r.data.tags.get("rnnsweep.role") != "sweep"]


def _sweep(cluster, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(["-m", *TRAIN, *args, f"ray.address={cluster.address}",
                    f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweep.dir={tmp}/multirun"],
                   cwd=tmp, extra_env=cluster.driver_env())


def _imports(python: Path, module: str, cluster) -> bool:
    found = subprocess.run([str(python), "-c", f"import {module}"], cwd=cluster.root,
                           env=cluster.env, capture_output=True, text=True)
    return found.returncode == 0


@pytest.mark.slow
def test_the_bare_node_has_only_torch_and_ray(cluster):
    bare = cluster.pythons["bare"]
    assert _imports(bare, "torch", cluster) and _imports(bare, "ray.dashboard", cluster)
    for absent in ("rnnsweep", "hydra", "omegaconf", "antlr4", "mlflow", "matplotlib"):
        assert not _imports(bare, absent, cluster), absent
    # No path back to this machine's environment: no system site-packages, no .pth.
    assert "include-system-site-packages = false" in (bare.parents[1] / "pyvenv.cfg").read_text()
    site = next(bare.parents[1].glob("lib/python*/site-packages"))
    assert not [p for p in site.glob("*.pth") if "/" in p.read_text()]
    # The second node runs that interpreter; the head, the linked venv without rnnsweep.
    assert cluster.nodes[1].process.args[0] == str(bare)
    assert cluster.nodes[0].process.args[0] == str(cluster.python)
    assert not _imports(cluster.python, "rnnsweep", cluster)


@pytest.mark.slow
def test_sweep_ships_its_code_and_lands_on_both_nodes(cluster, tmp_path):
    # A user package the driver can import (PYTHONPATH) and the nodes cannot: shipped.
    (tmp_path / "lib" / "userpkg").mkdir(parents=True)
    (tmp_path / "lib" / "userpkg" / "__init__.py").write_text("ANSWER = 42\n")
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "notes.txt").write_text("the user's files travel too\n")
    env = {**cluster.driver_env(), "PYTHONPATH": f"{REPO}:{tmp_path / 'lib'}"}
    done = run_cli(["-m", *TRAIN, "batch=1,2,3,4", "ray.packages=[userpkg]",
                    f"ray.working_dir={tmp_path / 'wd'}",
                    f"ray.address={cluster.address}", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                    f"hydra.sweep.dir={tmp_path}/multirun"], cwd=tmp_path, extra_env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _child_runs(tmp_path / "m.db")
    assert sorted(r.data.params["batch"] for r in runs) == ["1", "2", "3", "4"]
    assert {r.data.tags["rnnsweep.outcome"] for r in runs} == {"OK"}
    assert all("final_loss" in r.data.metrics for r in runs)
    assert len({r.data.tags["rnnsweep.ray.node_id"] for r in runs}) == 2


@pytest.mark.slow
def test_a_trial_runs_on_a_node_with_only_torch_and_ray(cluster, tmp_path):
    """The issue's command, as a user types it: nothing shipped by hand. Both nodes ran
    trials, so the bare one (only torch and Ray) imported Hydra and OmegaConf shipped
    from the driver."""
    done = _sweep(cluster, tmp_path, "batch=1,2,3,4", "steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _child_runs(tmp_path / "mlflow.db")
    assert sorted(r.data.params["batch"] for r in runs) == ["1", "2", "3", "4"]
    assert {r.data.tags["rnnsweep.outcome"] for r in runs} == {"OK"}
    assert len({r.data.tags["rnnsweep.ray.node_id"] for r in runs}) == 2


@pytest.mark.slow
def test_code_a_node_cannot_import_is_refused_naming_the_node(cluster, tmp_path):
    # userpkg imports on the driver only through a module that is not shipped.
    (tmp_path / "lib" / "userpkg").mkdir(parents=True)
    (tmp_path / "lib" / "userpkg" / "__init__.py").write_text("import driver_only\n")
    (tmp_path / "lib" / "driver_only.py").write_text("")
    env = {**cluster.driver_env(), "PYTHONPATH": f"{REPO}:{tmp_path / 'lib'}"}
    refused = run_cli(["-m", *TRAIN, "batch=1,2", "ray.packages=[userpkg]",
                       f"ray.address={cluster.address}", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                       f"hydra.sweep.dir={tmp_path}/multirun"], cwd=tmp_path, extra_env=env)
    assert refused.returncode == 2, refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("rnnsweep: error: node ") and "No module named 'driver_only'" in last
    assert not _child_runs(tmp_path / "m.db")


@pytest.mark.slow
def test_gpu_request_on_a_cluster_without_gpus_is_refused(cluster, tmp_path):
    refused = _sweep(cluster, tmp_path, "hardware=gpu", "batch=1,2")
    assert refused.returncode == 2
    assert "this cluster has no GPUs" in refused.stderr.strip().splitlines()[-1]
    assert not _child_runs(tmp_path / "mlflow.db")


@pytest.mark.slow
def test_ray_job_submit_recipe(cluster, tmp_path):
    """The README's recipe: the driver runs on the head, from the uploaded checkout."""
    ray_cli = Path(sys.executable).parent / "ray"
    submitted = subprocess.run(
        [str(ray_cli), "job", "submit", "--address", cluster.dashboard_url,
         "--working-dir", str(REPO), "--", "python", "-m", "rnnsweep", "-m", *TRAIN,
         "batch=1,2", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
         f"hydra.sweep.dir={tmp_path}/multirun"],
        cwd=tmp_path, env=cluster.driver_env(), capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-2000:]
    assert "succeeded" in submitted.stdout + submitted.stderr
    runs = _child_runs(tmp_path / "mlflow.db")
    assert sorted(r.data.params["batch"] for r in runs) == ["1", "2"]
    assert {r.data.tags["rnnsweep.outcome"] for r in runs} == {"OK"}


@pytest.mark.slow
def test_cluster_refusing_our_token_is_one_line(cluster, tmp_path):
    env = {k: v for k, v in cluster.driver_env().items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    refused = run_cli(["-m", *TRAIN, "batch=1,2", f"ray.address={cluster.address}",
                       f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                       f"hydra.sweep.dir={tmp_path}/multirun"], cwd=tmp_path, extra_env=env,
                      timeout=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rnnsweep: error: cannot connect to the Ray cluster at "
                           f"{cluster.address}")
    assert "Traceback" not in refused.stderr
    assert not _child_runs(tmp_path / "mlflow.db")

"""GPU placement proven without GPUs, and fractional GPUs capped to their share.

Ray nodes can advertise logical GPUs (`ray start --num-gpus 2` on a CPU machine); Ray
then grants GPU ids and sets CUDA_VISIBLE_DEVICES per task exactly as on real GPUs. The
trials' math runs on CPU through the test-only ``hardware.compute_device=cpu``, which
each trial records (tag ``rnnsweep.compute_device``): never a silent fallback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, run_cli, toy
from mlflow.tracking import MlflowClient

from rnnsweep.sweep.resources import gpu_tags
from rnnsweep.trial.run import memory_fraction, run_trial

# Timed (workload=bench) trials: hardware=gpu takes a whole GPU, shared_gpu a quarter.
# Half a CPU each, so that CPUs never limit how many trials share a GPU.
BENCH_ON_LOGICAL_GPUS = toy("workload=bench", "min_run_time=0.5", "hardware.num_cpus=0.5",
                            "hardware.compute_device=cpu")


# --- the policy, without Ray --------------------------------------------------------------


def _info(node, ids, start, end=None):
    return {"node_id": node, "gpu_ids": ids, "started": start, "finished": end}


def test_gpu_cotenants_are_trials_on_the_same_node_and_id_at_the_same_time():
    me = _info("a", ["0"], 10.0, 20.0)
    neighbours = [
        _info("a", ["0"], 12.0, 30.0),  # overlaps, same id: a co-tenant
        _info("a", ["0"], 15.0),  # still running, same id: a co-tenant
        _info("a", ["1"], 12.0, 18.0),  # other id
        _info("b", ["0"], 12.0, 18.0),  # other node
        _info("a", ["0"], 1.0, 9.0),  # before
        _info("a", ["0"], 21.0, 25.0),  # after
    ]
    tags = gpu_tags(me, neighbours, 20.0)
    assert tags == {"rnnsweep.ray.gpu_ids": "0", "rnnsweep.ray.gpu_cotenants": "2",
                    "rnnsweep.ray.gpu_shared": "true"}
    assert gpu_tags(_info("a", [], 10.0, 20.0), neighbours, 20.0) == {}


def test_memory_cap_is_the_granted_fraction_on_cuda_only():
    assert memory_fraction(0.25, "cuda") == 0.25
    assert memory_fraction(1, "cuda") is None and memory_fraction(2, "cuda") is None
    assert memory_fraction(0.25, "cpu") is None


def test_compute_device_override_is_recorded_not_silent():
    cfg = compose_cfg(toy("workload=train", "steps=1", "hardware=cpu",
                          "hardware.compute_device=cpu"))
    record = run_trial(cfg)
    assert record.outcome == "OK"
    assert record.tags["rnnsweep.compute_device"].startswith("cpu (test-only override")
    assert "rnnsweep.compute_device" not in run_trial(compose_cfg(
        toy("workload=train", "steps=1", "hardware=cpu"))).tags


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_shared_gpu_on_a_cpu_machine_is_refused_as_shared_gpu():
    from rnnsweep import config
    from rnnsweep.config import sweeps
    from rnnsweep.preflight.validation import ConfigError, check_overrides

    config.register()  # as the CLI does before it checks a command line
    sweeps.register()
    with pytest.raises(ConfigError, match=r"^hardware=shared_gpu \(hardware.num_gpus=0.25"):
        check_overrides(["hardware=shared_gpu"], multirun=False)
    with pytest.raises(ConfigError, match=r"^hardware=gpu \(hardware.device=cuda"):
        check_overrides(["hardware=gpu"], multirun=False)


# --- a two-node loopback cluster with two logical GPUs per node ---------------------------


@pytest.fixture(scope="module")
def gpu_cluster():
    from loopback_cluster import remove, start_cluster

    started = start_cluster([{"num_cpus": 4, "num_gpus": 2}, {"num_cpus": 4, "num_gpus": 2}])
    yield started
    remove(started)


def _sweep(cluster, tmp: Path, *args: str):
    return run_cli(["-m", *BENCH_ON_LOGICAL_GPUS, *args, f"ray.address={cluster.address}",
                    f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweep.dir={tmp}/multirun"],
                   cwd=tmp, extra_env=cluster.driver_env())


def _trials(db: Path) -> list[dict]:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("rnnsweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return [{**r.data.tags, "start": float(r.data.tags["rnnsweep.ray.started_at"]),
             "end": float(r.data.tags["rnnsweep.ray.finished_at"])}
            for r in runs if r.data.tags.get("rnnsweep.role") != "sweep"]


def _sharing(trial: dict, trials: list[dict]) -> list[dict]:
    """The other trials on the same node and GPU id whose windows overlap this one's."""
    return [o for o in trials if o is not trial
            and o["rnnsweep.ray.node_id"] == trial["rnnsweep.ray.node_id"]
            and o["rnnsweep.ray.gpu_ids"] == trial["rnnsweep.ray.gpu_ids"]
            and o["start"] < trial["end"] and o["end"] > trial["start"]]


@pytest.mark.slow
def test_mixed_sweep_whole_gpus_alone_shared_gpus_packed(gpu_cluster, tmp_path):
    done = _sweep(gpu_cluster, tmp_path, "hardware=gpu,shared_gpu", "seed=0,1,2,3")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _trials(tmp_path / "mlflow.db")
    assert len(trials) == 8
    assert {t["rnnsweep.outcome"] for t in trials} == {"OK"}
    assert all(t["rnnsweep.compute_device"].startswith("cpu (test-only") for t in trials)
    whole = [t for t in trials if t["rnnsweep.ray.request"].endswith("GPU=1")]
    shared = [t for t in trials if t["rnnsweep.ray.request"].endswith("GPU=0.25")]
    assert len(whole) == len(shared) == 4
    for trial in trials:
        assert trial["rnnsweep.ray.gpu_ids"] in ("0", "1")  # one logical GPU id each
        # The launcher's record of co-tenancy agrees with the windows on the runs.
        assert int(trial["rnnsweep.ray.gpu_cotenants"]) == len(_sharing(trial, trials))
    for trial in whole:  # a timed trial's GPU is its own
        assert trial["rnnsweep.ray.gpu_cotenants"] == "0"
        assert trial["rnnsweep.ray.exclusive"] == "true"
    for trial in shared:  # at most four quarter-GPU trials on one id, none beside a whole
        assert all(o in shared for o in _sharing(trial, trials))
        assert int(trial["rnnsweep.ray.gpu_cotenants"]) <= 3
    # Ray packed them: some GPU id held several shared trials at once.
    assert max(int(t["rnnsweep.ray.gpu_cotenants"]) for t in shared) >= 1


@pytest.mark.slow
def test_request_larger_than_any_node_is_refused_up_front(gpu_cluster, tmp_path):
    refused = _sweep(gpu_cluster, tmp_path, "hardware=gpu", "hardware.num_gpus=3", "seed=0,1")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert "GPU=3 but no Ray node has that" in line and "GPU=2" in line
    assert not (tmp_path / "mlflow.db").exists() or not _trials(tmp_path / "mlflow.db")


# --- real CUDA (skipped without it) -------------------------------------------------------


@pytest.mark.gpu
def test_fractional_gpu_trial_caps_its_cuda_memory():
    cfg = compose_cfg(toy("workload=train", "steps=1", "hardware=shared_gpu"))
    try:
        record = run_trial(cfg)
        assert record.outcome == "OK", record.reason
        assert record.tags["rnnsweep.cuda_memory_fraction"] == "0.25"
        # The cap holds in this process now: more than a quarter of the device fails.
        total = torch.cuda.get_device_properties(0).total_memory
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(total * 0.3), dtype=torch.uint8, device="cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)  # the other GPU tests share it


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU machine")
def test_gpu_check_without_cuda_says_so_and_exits_2():
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("gpu_check: no CUDA device here")
    assert len(done.stderr.strip().splitlines()) == 1

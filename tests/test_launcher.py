"""The Ray launcher, with real Ray on loopback and a real MLflow store in a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import alive, run_cli, start_cli, toy, trial_pids, wait_for
from mlflow.tracking import MlflowClient

# Ray reads this when it is imported: it keeps every server of a test cluster on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray would post usage statistics off this machine a minute into a session.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Every test here starts Ray and CLI subprocesses.
pytestmark = pytest.mark.slow

TRAIN_1CPU = ["workload=train", "hardware.num_cpus=1"]


def sweep_args(tmp: Path, *args: str) -> list[str]:
    return ["-m", *toy(*args), f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            f"hydra.sweep.dir={tmp}/multirun"]


def run_sweep(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(sweep_args(tmp, *args), cwd=tmp, timeout=timeout)


def start_sweep(tmp: Path, *args: str) -> subprocess.Popen:
    return start_cli(sweep_args(tmp, *args), cwd=tmp)


def runs(tmp: Path, parents: bool = False) -> list:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("rnnsweep")
    if exp is None:
        return []
    found = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in found if (r.data.tags.get("rnnsweep.role") == "sweep") == parents]


def history(tmp: Path, run, key: str) -> list:
    return MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_metric_history(run.info.run_id, key)


@pytest.fixture(scope="module")
def shared_cluster() -> str:
    """A 2-CPU Ray on loopback for the tests whose subject is not the embedded Ray's own
    start and stop: their sweeps connect to it as to a cluster, which saves a Ray
    start-up per sweep. Yields the override that points a sweep at it."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    yield f"ray.address={cluster.address}"
    cluster.shutdown()


def test_four_trials_become_four_children_of_one_parent(tmp_path):
    done = run_sweep(tmp_path, "batch=1,8,32,128")
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,) = runs(tmp_path, parents=True)
    children = runs(tmp_path)
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.params["batch"]) for c in children) == [1, 8, 32, 128]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.metrics["latency_ms"] > 0
        assert child.data.tags["rnnsweep.ray.node_ip"] == "127.0.0.1"
        # Timed trials get the whole node's CPUs, so none ran beside another.
        assert child.data.tags["rnnsweep.ray.trials_beside"] == "0"
        assert float(child.data.params["hardware.num_cpus"]) == os.cpu_count()
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_finished"] == 4
    assert parent.data.metrics["best_throughput_seq_per_s"] == max(
        c.data.metrics["throughput_seq_per_s"] for c in children)
    # Each result is printed as its trial completes, before the closing summary.
    assert done.stdout.index("  #") < done.stdout.index("4/4 trials finished")
    assert parent.data.tags["rnnsweep.sweep_name"] == ""
    assert {c.data.tags["rnnsweep.sweep"] for c in children} == {parent.info.run_id}


def test_failed_trials_are_recorded_and_resume_reruns_only_what_is_missing(tmp_path,
                                                                         shared_cluster):
    first = run_sweep(tmp_path, *TRAIN_1CPU, "batch=1,2", "guard.raise_at_step=null,1",
                      shared_cluster)
    assert first.returncode == 1  # any failed trial makes the exit status non-zero
    children = runs(tmp_path)
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(children) == 4 and len(failed) == 2
    assert all("injected failure at step 1" in c.data.tags["rnnsweep.reason"] for c in failed)
    assert all(c.data.tags["rnnsweep.outcome"] == "OK" for c in children if c not in failed)
    assert runs(tmp_path, parents=True)[0].data.metrics["trials_failed"] == 2

    again = run_sweep(tmp_path, *TRAIN_1CPU, "batch=1,2,3", "guard.raise_at_step=null,1",
                      shared_cluster)
    assert (again.stdout + again.stderr).count("[reused]") == 2  # the two that finished
    (_, resumed) = sorted(runs(tmp_path, parents=True), key=lambda r: r.info.start_time)[:2]
    reused = {k for k in resumed.data.tags if k.startswith("rnnsweep.reused.")}
    assert len(reused) == 2
    batches = sorted(int(c.data.params["batch"]) for c in runs(tmp_path))
    assert batches == [1, 1, 1, 2, 2, 2, 3, 3]  # failed ones ran again, batch=3 is new

    forced = run_sweep(tmp_path, *TRAIN_1CPU, "batch=1", "ray.rerun=true", shared_cluster)
    assert forced.returncode == 0
    assert "[reused]" not in forced.stdout + forced.stderr
    assert len(runs(tmp_path)) == 9


def test_infeasible_request_and_unreachable_cluster_fail_up_front(tmp_path):
    infeasible = run_sweep(tmp_path, "batch=1,8", "hardware=cpu", "hardware.num_cpus=64")
    assert infeasible.returncode == 2
    assert "asks for CPU=64, GPU=0 but no Ray node has that" in infeasible.stderr
    # Refused before anything was recorded: no parent run, no children.
    assert runs(tmp_path) == [] and runs(tmp_path, parents=True) == []

    unreachable = run_sweep(tmp_path, "batch=1,8", "ray.address=127.0.0.1:1", timeout=60)
    assert unreachable.returncode == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert runs(tmp_path, parents=True) == []


def test_killed_worker_is_retried_then_recorded_as_failed(tmp_path, shared_cluster):
    long = [*TRAIN_1CPU, "steps=400", "model.hidden_size=64", "ray.max_retries=0,1",
            shared_cluster]
    proc = start_sweep(tmp_path, *long)
    try:
        for idx in (0, 1):
            worker = wait_for(lambda i=idx: trial_pids(i), 120, f"trial {idx}")
            os.kill(next(iter(worker)), signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    by_retries = {c.data.params["ray.max_retries"]: c for c in runs(tmp_path)}
    no_retry, one_retry = by_retries["0"], by_retries["1"]
    assert no_retry.info.status == "FAILED"
    assert "WorkerCrashedError after 0 retries" in no_retry.data.tags["rnnsweep.reason"]
    assert one_retry.info.status == "FINISHED"
    assert len(history(tmp_path, one_retry, "loss")) == 400


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_marks_running_and_pending_trials_killed(tmp_path, signum):
    proc = start_sweep(tmp_path, *TRAIN_1CPU, "steps=100000", "model.hidden_size=64",
                       "batch=1,2,3")
    try:
        # Found below the CLI this test started: its own embedded Ray's workers.
        workers = wait_for(lambda: trial_pids(0, proc.pid) | trial_pids(1, proc.pid), 120,
                           "a running trial")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err[-3000:]  # 130 or 143, as a shell reports
    children = runs(tmp_path)
    assert len(children) == 3
    assert {c.info.status for c in children} == {"KILLED"}
    assert runs(tmp_path, parents=True)[0].info.status == "KILLED"
    wait_for(lambda: not alive(workers), 30, "the workers to exit")


def test_sixteen_trials_two_at_a_time_lose_nothing(tmp_path, shared_cluster):
    steps = 40
    done = run_sweep(tmp_path, *TRAIN_1CPU, f"steps={steps}", "seed=range(16)", shared_cluster,
                     timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    children = runs(tmp_path)
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(16))
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("loss", "grad_norm", "grad_norm_clipped", "saturation"):
            assert sorted(m.step for m in history(tmp_path, child, key)) == list(range(steps))
    # One-CPU training trials pack two at a time on the 2-CPU cluster.
    assert max(int(c.data.tags["rnnsweep.ray.trials_beside"]) for c in children) >= 1


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        done = run_sweep(tmp_path, *TRAIN_1CPU, "steps=60", "batch=1,2,3,4",
                         f"ray.address={cluster.address}")
        assert done.returncode == 0, done.stderr[-3000:]
        children = runs(tmp_path)
        assert len(children) == 4
        assert len({c.data.tags["rnnsweep.ray.node_id"] for c in children}) == 2
        assert {c.data.tags["rnnsweep.ray.node_ip"] for c in children} == {"127.0.0.1"}
        for child in children:
            assert len(history(tmp_path, child, "loss")) == 60

        # A request that no node of this (GPU-less) cluster can meet fails before running.
        gpu = run_sweep(tmp_path, "hardware=gpu", "batch=1,2", f"ray.address={cluster.address}")
        assert gpu.returncode == 2
        assert "no Ray node has that" in gpu.stderr and "GPU=1" in gpu.stderr
        assert len(runs(tmp_path)) == 4
    finally:
        cluster.shutdown()


@pytest.mark.gpu
def test_shared_gpu_trials_pack_onto_one_device(tmp_path):
    done = run_sweep(tmp_path, "hardware=shared_gpu", "workload=train", "steps=200",
                     "batch=1,2,3,4")
    assert done.returncode == 0, done.stderr[-3000:]
    children = runs(tmp_path)
    assert {c.data.params["hardware.num_gpus"] for c in children} == {"0.25"}
    assert max(int(c.data.tags["rnnsweep.ray.trials_beside"]) for c in children) >= 1

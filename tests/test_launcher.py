"""The Ray launcher, with real Ray on loopback and a real MLflow store in a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

TOY = ["model.input_size=8", "model.hidden_size=16", "seq_len=10", "steps=3", "warmup=1",
       "min_run_time=0.05"]


def sweep_cmd(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "rnnsweep", "-m", *TOY, *args,
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweep.dir={tmp}/multirun"]


def run_sweep(tmp: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(tmp, *args), cwd=tmp, capture_output=True, text=True,
                          timeout=timeout)


def runs(tmp: Path, parents: bool = False) -> list:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("rnnsweep")
    found = client.search_runs([exp.experiment_id], max_results=1000)
    is_parent = [r.data.tags.get("rnnsweep.role") == "sweep" for r in found]
    return [r for r, p in zip(found, is_parent, strict=True) if p == parents]


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
        # Timed trials get the whole (2-CPU) node: none ran beside another.
        assert child.data.tags["rnnsweep.ray.trials_beside"] == "0"
        assert child.data.params["hardware.num_cpus"] == str(float(os.cpu_count()))
    assert parent.data.metrics["trials_finished"] == 4
    assert parent.data.metrics["best_throughput_seq_per_s"] == max(
        c.data.metrics["throughput_seq_per_s"] for c in children)
    # Results are printed as each trial completes, then a summary table.
    assert done.stdout.count("[OK]") >= 4 and "4/4 done" in done.stdout


def test_failing_trial_is_recorded_and_the_others_finish(tmp_path):
    done = run_sweep(tmp_path, "workload=train", "hardware.num_cpus=1",
                     "guard.raise_at_step=null,1")
    assert done.returncode == 1  # a failed trial makes the sweep's exit status non-zero
    by_outcome = {c.data.tags["rnnsweep.outcome"]: c for c in runs(tmp_path)}
    assert by_outcome["OK"].info.status == "FINISHED"
    failed = by_outcome["FAILED"]
    assert failed.info.status == "FAILED"
    assert "injected failure at step 1" in failed.data.tags["rnnsweep.reason"]
    assert runs(tmp_path, parents=True)[0].data.metrics["trials_failed"] == 1


def test_resume_skips_finished_trials_unless_forced(tmp_path):
    assert run_sweep(tmp_path, "workload=train", "batch=1,8").returncode == 0
    again = run_sweep(tmp_path, "workload=train", "batch=1,8,32")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("[skipped]") >= 2
    assert sorted(int(c.data.params["batch"]) for c in runs(tmp_path)) == [1, 8, 32]
    forced = run_sweep(tmp_path, "workload=train", "batch=1", "ray.rerun=true")
    assert forced.returncode == 0
    assert sorted(int(c.data.params["batch"]) for c in runs(tmp_path)) == [1, 1, 8, 32]


def test_infeasible_request_and_unreachable_cluster_fail_up_front(tmp_path):
    infeasible = run_sweep(tmp_path, "batch=1,8", "hardware=cpu", "hardware.num_cpus=64")
    assert infeasible.returncode == 2
    assert "no Ray node has that" in infeasible.stderr
    assert "CPU=64" in infeasible.stderr
    assert runs(tmp_path) == []  # nothing ran
    unreachable = run_sweep(tmp_path, "batch=1,8", "ray.address=127.0.0.1:1", timeout=60)
    assert unreachable.returncode == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert all(p.info.status == "FAILED" for p in runs(tmp_path, parents=True))


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _trial_pids(idx: int) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"ray::rnnsweep-trial-{idx}"], capture_output=True,
                           text=True)
    return [int(p) for p in found.stdout.split()]


LONG = ["workload=train", "hardware.num_cpus=1", "steps=400", "model.hidden_size=64"]


@pytest.mark.parametrize("retries, status", [(0, "FAILED"), (1, "FINISHED")])
def test_killed_worker_is_retried_then_recorded(tmp_path, retries, status):
    proc = subprocess.Popen(sweep_cmd(tmp_path, *LONG, "batch=4", f"ray.max_retries={retries}"),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        pids = _wait_for(lambda: _trial_pids(0), 120, "the trial's worker")
        os.kill(pids[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    (child,) = runs(tmp_path)
    assert child.info.status == status, err[-3000:]
    if status == "FAILED":
        assert proc.returncode == 1
        assert "WorkerCrashedError" in child.data.tags["rnnsweep.reason"]
    else:
        assert proc.returncode == 0
        assert len(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
                   .get_metric_history(child.info.run_id, "loss")) == 400


def test_ctrl_c_kills_running_and_pending_trials(tmp_path):
    proc = subprocess.Popen(sweep_cmd(tmp_path, *LONG, "steps=100000", "batch=1,2,3"),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for(lambda: _trial_pids(0) or _trial_pids(1), 120, "a running trial")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    children = runs(tmp_path)
    assert len(children) == 3
    assert {c.info.status for c in children} == {"KILLED"}
    assert runs(tmp_path, parents=True)[0].info.status == "KILLED"
    # The workers are gone with the local Ray.
    assert _wait_for(lambda: not (_trial_pids(0) or _trial_pids(1) or _trial_pids(2)) or True,
                     30, "workers to exit")


def test_sixteen_trials_two_at_a_time_lose_nothing(tmp_path):
    steps = 40
    done = run_sweep(tmp_path, "workload=train", "hardware.num_cpus=1", f"steps={steps}",
                     "seed=range(16)", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    children = runs(tmp_path)
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(16))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("loss", "grad_norm", "grad_norm_clipped"):
            history = client.get_metric_history(child.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(steps))
    # One-CPU training trials pack two at a time on the 2-CPU machine.
    assert max(int(c.data.tags["rnnsweep.ray.trials_beside"]) for c in children) >= 1

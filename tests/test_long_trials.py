"""Long training trials: held-out evaluation, schedules, early divergence, checkpoints
and resume, live metrics, time limits and stoppers (issues 18 and 19).

The fast tests run the trial logic in this process; the slow ones run the CLI on a real
embedded Ray and a real SQLite store, and read the runs back with MlflowClient while
the trials train.
"""

from __future__ import annotations

import math
import os
import signal
import time

import pytest
import torch
from conftest import cli_paths, compose_cfg, run_cli, start_cli, toy, trial_pids, wait_for

from rnnsweep.config.errors import ConfigError
from rnnsweep.sweep.stopping import Asha, MedianRule
from rnnsweep.trial import data, training
from rnnsweep.trial.checkpoint import Checkpointer
from rnnsweep.trial.live import Live
from rnnsweep.trial.run import build_model, run_trial

TEXT = ("task=char_lm", "model.input_size=80")

# --- held-out evaluation, schedules, divergence (in this process) ------------------------


@pytest.mark.parametrize("task", [("task=regression",), ("task=adding",), TEXT])
def test_every_builtin_task_reports_held_out_metrics(task):
    record = run_trial(compose_cfg(toy(*task, "workload=train", "steps=12", "eval_every=4")))
    assert record.outcome == "OK", record.reason
    val = record.sparse_metrics["val_loss"]
    assert sorted(val) == [3, 7, 11]  # every eval_every steps, and the last
    assert all(math.isfinite(v) for v in val.values())
    assert record.metrics["val_loss"] == val[11]
    assert record.metrics["best_val_loss"] == min(val.values())
    assert val[int(record.metrics["best_val_step"])] == record.metrics["best_val_loss"]
    if task == TEXT:
        assert record.metrics["val_bits_per_char"] == pytest.approx(val[11] / math.log(2))
        assert "best_val_bits_per_char" in record.metrics


def test_char_lm_never_trains_on_its_held_out_text():
    source = data.CharText(batch=64, seq_len=20, input_size=80, device=torch.device("cpu"),
                           seed=0)
    text = data.read_text(None)
    held_out = len(source.val_codes)
    assert held_out >= len(text) // 10
    assert len(source.codes) + held_out == len(text)
    # Training windows are drawn from the first part only: their last target index is
    # inside it, for every batch of many.
    for step in range(50):
        x, y = source.batch(step)
        assert x.shape[0] == 64
    batches = source.validation()
    assert sum(len(x) for x, _ in batches) >= 2
    # Validation windows are pieces of the held-out tail.
    tail = source.val_codes.tolist()
    _, first_targets = batches[0]
    window = first_targets[0].tolist()
    assert any(tail[i:i + len(window)] == window for i in range(len(tail)))


def test_regression_held_out_set_is_drawn_with_another_seed():
    source = data.Regression(4, 5, 3, torch.device("cpu"), seed=0)
    ((vx, vy),) = source.validation()
    assert not torch.equal(vx, source.x)
    # The same teacher maps both: a model that learnt it scores well on either.
    assert torch.allclose(vy, vx @ source.teacher)


@pytest.mark.parametrize("schedule,check", [
    ("cosine", lambda lrs, lr: lrs[0] == lr and lrs[-1] < lr * 0.05),
    ("step", lambda lrs, lr: lrs[0] == lr and lrs[-1] == pytest.approx(lr * 0.01)),
    ("constant", lambda lrs, lr: set(lrs) == {lr}),
])
def test_learning_rate_schedules(schedule, check):
    record = run_trial(compose_cfg(toy("workload=train", "steps=30", "task.lr=0.01",
                                       f"task.schedule={schedule}")))
    assert record.outcome == "OK", record.reason
    assert check(record.step_metrics["lr"], 0.01)


def test_a_trial_stops_diverged_after_consecutive_non_finite_steps():
    steps = list(range(5, 200))
    record = run_trial(compose_cfg(toy("workload=train", "steps=200",
                                       f"guard.inject_nan_steps=[{','.join(map(str, steps))}]",
                                       "guard.stop_after_nonfinite=4")))
    assert record.outcome == "DIVERGED"
    assert "4 steps in a row" in record.reason
    assert record.metrics["steps_done"] == 9  # steps 5..8 non-finite, then it stopped
    assert record.tags["rnnsweep.stopped_at_step"] == "9"


def test_a_non_finite_final_loss_is_never_ok():
    record = run_trial(compose_cfg(toy("workload=train", "steps=6",
                                       "guard.inject_nan_steps=[5]")))
    assert record.outcome == "DIVERGED"
    assert "final training loss" in record.reason


def _train(cfg, checkpointer, stop_at=None):
    """The trial's training loop with ``checkpointer``, stopped (as a stopper would)
    before step ``stop_at``; returns the model."""
    device = torch.device("cpu")
    source = data.CharText(cfg.batch, cfg.seq_len, cfg.model.input_size, device, cfg.seed)
    model = build_model(cfg, source.output_size)
    optimizer = training.make_optimizer("adam", model.parameters(), cfg.task.lr)
    live = Live()

    def batch_at(step):
        if step == stop_at:
            live.request_stop("STOPPED", "test")
        return source.batch(step)

    hooks = training.Hooks(live=live, checkpoint=checkpointer,
                           scheduler=training.make_scheduler("cosine", optimizer, cfg.steps,
                                                             0.1, None),
                           source_state=(source.state_dict, source.load_state_dict))
    result = training.train(model, batch_at, cfg.steps, optimizer, device, None, False,
                            training.GuardSettings(), loss_fn=source.loss, hooks=hooks)
    return model, result, live


def test_a_resumed_trial_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    cfg = compose_cfg(toy(*TEXT, "steps=40", "task.lr=0.01"))
    whole, _, _ = _train(cfg, None)
    saver = Checkpointer(tmp_path / "ck", every_s=None, every_steps=10, keep=False)
    _, first, _ = _train(cfg, saver, stop_at=25)  # the worker "dies" after step 24
    assert first.stopped is not None and first.last_step == 26  # asked during step 25
    resumed, second, live = _train(cfg, saver)
    assert second.resumed_from_step == 20
    assert second.last_step == 40
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    # Its history is whole: the checkpoint's steps first, then its own, once each.
    steps = [step for step, _ in live.drain()]
    assert steps == list(range(40))
    assert len(second.series["loss"]) == 40


# --- bad input (in this process: the checks the CLI runs before anything starts) ---------


@pytest.mark.parametrize("overrides,named", [
    (["tracking.live_interval_s=0"], "tracking.live_interval_s=0"),
    (["tracking.live_interval_s=-2"], "tracking.live_interval_s=-2"),
    (["tracking.live_interval_s=inf"], "tracking.live_interval_s=inf"),
    (["trial_timeout_s=0"], "trial_timeout_s=0"),
    (["sweep_timeout_s=nan"], "sweep_timeout_s=nan"),
    (["checkpoint.every_s=-1"], "checkpoint.every_s=-1"),
    (["checkpoint.every_steps=0"], "checkpoint.every_steps=0"),
    (["checkpoint.every_steps=5", "checkpoint.dir=/proc/rnnsweep-ck"], "checkpoint.dir=/proc"),
    (["checkpoint.store=s3"], "checkpoint.store=s3"),
    (["eval_every=50", "steps=20"], "eval_every=50"),
    (["guard.stop_after_nonfinite=0"], "guard.stop_after_nonfinite=0"),
    (["hydra.launcher.stopper=hyperband"], "hydra.launcher.stopper=hyperband"),
    (["hydra.launcher.reduction_factor=1"], "hydra.launcher.reduction_factor=1"),
    (["hydra.launcher.grace_period=500", "steps=20"], "hydra.launcher.grace_period=500"),
    (["objective.metric=final_los", "workload=train"], "objective.metric=final_los"),
    (["hydra.launcher.stopper=asha", "workload=bench"], "hydra.launcher.stopper=asha"),
    (["hydra.launcher.stopper=asha", "workload=train", "objective.metric=step_time_ms"],
     "objective.metric=step_time_ms"),
])
def test_bad_long_trial_settings_are_refused_in_one_line(overrides, named):
    from rnnsweep.preflight.validation import check_overrides

    with pytest.raises((ConfigError, Exception)) as caught:
        check_overrides(toy(*overrides), multirun=False)
    message = str(caught.value)
    assert named in message, message
    assert "\n" not in message.strip()


def test_an_unknown_schedule_is_refused():
    from rnnsweep.preflight.validation import check_overrides

    with pytest.raises(ConfigError) as caught:
        check_overrides(toy("task.schedule=linear"), multirun=False)
    assert "task.schedule" in str(caught.value)
    assert "constant" in str(caught.value) or "cosine" in str(caught.value)


# --- stoppers (the rules alone) ----------------------------------------------------------


def test_asha_stops_a_trial_below_the_best_third_at_a_rung():
    asha = Asha("minimize", max_steps=90, grace=10, rf=3)
    assert asha.rungs == [10, 30]
    assert asha.report(0, 9, 0.5) is None  # the first at a rung is never stopped
    assert asha.report(1, 9, 0.4) is None  # better than the cut-off
    reason = asha.report(2, 9, 0.9)
    assert reason and "rung 10" in reason
    # Judged again at rung 10: its 0.5 is no longer within the best third there.
    assert "rung 10" in asha.report(0, 29, 0.3)
    assert asha.report(1, 29, 0.1) is None  # the best goes on
    # A trial that passed a rung first is stopped once better ones reach it.
    asha = Asha("minimize", max_steps=90, grace=10, rf=2)
    assert asha.report(0, 9, 0.9) is None  # alone at rung 10
    assert asha.report(1, 9, 0.2) is None
    assert asha.report(0, 12, 0.8) is not None  # judged again: 0.9 was not the best half
    # Maximising: higher is better.
    asha = Asha("maximize", max_steps=90, grace=10, rf=2)
    assert asha.report(0, 9, 5.0) is None
    assert asha.report(1, 9, 1.0) is not None


def test_the_median_rule_waits_for_enough_trials():
    rule = MedianRule("minimize", grace=2, min_trials=2)
    for step in range(6):
        assert rule.report(0, step, 1.0 - step * 0.1) is None
    assert rule.report(1, 3, 0.1) is None  # only one other trial has reached step 3
    for step in range(6):
        rule.report(2, step, 0.9 - step * 0.1)
    assert rule.report(3, 0, 5.0) is None  # within its grace period (2 steps)
    reason = rule.report(3, 3, 5.0)
    assert reason and "median" in reason


# --- on real Ray and a real store --------------------------------------------------------

# A small char-level LSTM whose steps take some milliseconds each on this CPU.
LONG = ("-m", *TEXT, "model.hidden_size=48", "seq_len=40", "batch=8", "workload=train",
        "hardware.num_cpus=1", "tracking.live_interval_s=0.5", "ray.max_retries=2")


def _children(store):
    return [r for r in store.runs() if r.data.tags.get("rnnsweep.role") != "sweep"]


def _only_child(store):
    runs = _children(store)
    return runs[0] if len(runs) == 1 else None


def _steps(store, run_id, metric="loss"):
    return sorted(m.step for m in store.client.get_metric_history(run_id, metric))


@pytest.mark.slow
def test_live_metrics_reach_the_run_while_it_trains(mlflow_store, tmp_path):
    steps = 3000  # several live intervals long on a quiet machine as on a loaded one
    proc = start_cli([*LONG, f"steps={steps}", "seed=0", *cli_paths(mlflow_store, tmp_path)],
                     tmp_path, merge_output=True)
    seen = []
    try:
        run = wait_for(lambda: _only_child(mlflow_store), 120, "the trial's run")
        while proc.poll() is None:
            info = mlflow_store.client.get_run(run.info.run_id).info
            if info.status != "RUNNING":
                break
            count = len(_steps(mlflow_store, run.info.run_id))
            if not seen or count != seen[-1]:
                seen.append(count)
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    growing = [n for n in seen if 0 < n < steps]
    assert len(growing) >= 3, f"loss history while RUNNING: {seen}"
    final = _steps(mlflow_store, run.info.run_id)
    assert final == list(range(steps))  # every step exactly once
    run = mlflow_store.client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    # The live display's log lines: step of steps, loss and an ETA.
    assert f"/{steps}  loss" in out and "ETA" in out
    # Its Duration is the trial's own, not the sweep's.
    duration = (run.info.end_time - run.info.start_time) / 1e3
    parent = next(r for r in mlflow_store.runs() if r.data.tags.get("rnnsweep.role") == "sweep")
    assert duration < (parent.info.end_time - parent.info.start_time) / 1e3


@pytest.mark.slow
def test_a_killed_worker_resumes_from_its_checkpoint(mlflow_store, tmp_path):
    # Long enough that the worker is still training when half its steps have reached the
    # store: the live values trail the training by up to an interval (CI once found the
    # worker gone at 60% of 400 steps).
    steps, every = 1200, 40
    common = [*LONG, f"steps={steps}", "seed=3", f"checkpoint.every_steps={every}",
              "checkpoint.keep=true", *cli_paths(mlflow_store, tmp_path)]
    proc = start_cli([*common, f"checkpoint.dir={tmp_path / 'killed'}"], tmp_path,
                     merge_output=True)
    try:
        run = wait_for(lambda: _only_child(mlflow_store), 120, "the trial's run")
        wait_for(lambda: len(_steps(mlflow_store, run.info.run_id)) >= steps // 2, 240,
                 "half the steps")
        workers = trial_pids(0, root=proc.pid)
        assert len(workers) == 1, "the trial ended before half its steps were recorded"
        (pid,) = workers
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    run = mlflow_store.client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED", run.data.tags.get("rnnsweep.reason")
    assert run.data.tags["rnnsweep.retries"] == "1"
    resumed = int(run.data.tags["rnnsweep.resumed_from_step"])
    # The checkpoint at the kill is at most one interval behind the training, which is
    # ahead of what the store had when the test killed it.
    assert steps // 2 - every <= resumed < steps and resumed % every == 0
    assert _steps(mlflow_store, run.info.run_id) == list(range(steps))
    # The same trial, never interrupted (rerun: the store has it finished already).
    whole = run_cli([*common, f"checkpoint.dir={tmp_path / 'whole'}", "ray.rerun=true"],
                    tmp_path)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    digest = run.data.tags["rnnsweep.config_hash"]
    killed = torch.load(tmp_path / "killed" / digest / "checkpoint.pt", weights_only=False)
    uninterrupted = torch.load(tmp_path / "whole" / digest / "checkpoint.pt",
                               weights_only=False)
    assert killed["step"] == uninterrupted["step"] == steps
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(tensor, killed["model"][name]), name


@pytest.mark.slow
def test_a_sweep_rerun_after_its_driver_died_continues_from_the_checkpoint(mlflow_store,
                                                                             tmp_path):
    steps = 400
    args = [*LONG, f"steps={steps}", "seed=4", "checkpoint.every_steps=25",
            f"checkpoint.dir={tmp_path / 'ck'}", *cli_paths(mlflow_store, tmp_path)]
    proc = start_cli(args, tmp_path, merge_output=True)
    try:
        run = wait_for(lambda: _only_child(mlflow_store), 120, "the trial's run")
        wait_for(lambda: len(_steps(mlflow_store, run.info.run_id)) >= 120, 240,
                 "120 steps")
        workers = trial_pids(0, root=proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; its watchdog ends Ray
        proc.wait(timeout=30)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers), 60,
                 "the orphaned worker to end")
    finally:
        if proc.poll() is None:
            proc.kill()
    # The report command reaps the dead sweep, as the sweep commands do.
    report = run_cli(["--experiment", "rnnsweep", "--tracking-uri", mlflow_store.uri,
                      "--no-log"], tmp_path, module="rnnsweep.report")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "driver was lost" in report.stdout
    old = mlflow_store.client.get_run(run.info.run_id)
    assert old.info.status == "KILLED"
    assert old.data.tags["rnnsweep.reason"] == "driver lost"
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    new = [r for r in _children(mlflow_store) if r.info.run_id != run.info.run_id]
    assert len(new) == 1
    new = new[0]
    assert new.info.status == "FINISHED"
    resumed = int(new.data.tags["rnnsweep.resumed_from_step"])
    assert resumed >= 100 and resumed % 25 == 0
    # One continuous history on the new run: the checkpoint's steps and its own.
    assert _steps(mlflow_store, new.info.run_id) == list(range(steps))


@pytest.mark.slow
def test_time_limits_end_a_hung_trial_and_a_slow_one(mlflow_store, tmp_path):
    limit = 6
    began = time.monotonic()
    result = run_cli([*LONG, "steps=20000", f"trial_timeout_s={limit}",
                      "guard.hang_at_step=30,null", "tracking.live_interval_s=1",
                      *cli_paths(mlflow_store, tmp_path)], tmp_path)
    wall = time.monotonic() - began
    assert result.returncode == 1, result.stdout + result.stderr  # trials did not finish
    runs = _children(mlflow_store)
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "KILLED"
        assert run.data.tags["rnnsweep.outcome"] == "TIMED_OUT"
        assert f"trial_timeout_s={limit}" in run.data.tags["rnnsweep.reason"]
        # Its limit plus a few seconds (its worker asks every second; a hung one is
        # killed a few seconds later).
        duration = (run.info.end_time - run.info.start_time) / 1e3
        assert duration < limit + 12, duration
        assert _steps(mlflow_store, run.info.run_id), "its partial metrics are kept"
    hung = next(r for r in runs if r.data.params["guard.hang_at_step"] == "30")
    assert "its worker was killed" in hung.data.tags["rnnsweep.reason"]
    assert _steps(mlflow_store, hung.info.run_id) == list(range(30))
    slow = next(r for r in runs if r is not hung)
    assert "final_loss" in slow.data.metrics  # ended on its own, with its record
    assert wall < 120


@pytest.mark.slow
def test_a_sweep_time_limit_closes_the_sweep_with_every_run_final(mlflow_store, tmp_path):
    result = run_cli([*LONG, "steps=20000", "seed=0,1,2", "hardware.num_cpus=2",
                      "sweep_timeout_s=8", *cli_paths(mlflow_store, tmp_path)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cut at sweep_timeout_s=8" in result.stdout
    runs = mlflow_store.runs()
    assert all(r.info.status != "RUNNING" for r in runs)
    parent = next(r for r in runs if r.data.tags.get("rnnsweep.role") == "sweep")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rnnsweep.sweep_limit"] == "sweep_timeout_s=8 reached"
    children = _children(mlflow_store)
    assert len(children) == 3
    for run in children:
        assert run.info.status == "KILLED"
        assert run.data.tags["rnnsweep.reason"] == "sweep_timeout_s=8 reached"


STOPPER_GRID = ("-m", "task=regression", "model.hidden_size=96", "model.input_size=16",
                "seq_len=60", "batch=16", "workload=train", "steps=150", "eval_every=5",
                # Two trials side by side, the poor rates first in the grid.
                "hardware.num_cpus=1", "tracking.live_interval_s=0.3",
                "task.lr=0.00001,0.000003,0.01,0.003")


@pytest.mark.slow
@pytest.mark.parametrize("stopper", [("hydra.launcher.stopper=asha",
                                      "hydra.launcher.grace_period=15"),
                                     ("hydra.launcher.stopper=median",
                                      "hydra.launcher.grace_period=15",
                                      "hydra.launcher.min_trials=1")])
def test_stoppers_end_the_poor_trials_early(mlflow_store, tmp_path, stopper):
    result = run_cli([*STOPPER_GRID, *stopper, *cli_paths(mlflow_store, tmp_path)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = {r.data.params["task.lr"]: r for r in _children(mlflow_store)}
    for lr in ("1e-05", "3e-06"):
        run = runs[lr]
        assert run.data.tags["rnnsweep.outcome"] == "STOPPED", run.data.tags
        assert run.info.status == "FINISHED"
        assert int(run.data.tags["rnnsweep.stopped_at_step"]) < 150
        assert run.data.tags["rnnsweep.reason"].startswith(stopper[0].split("=")[1])
        assert "best_val_loss" in run.data.metrics  # its metrics are kept
    best = min(runs.values(), key=lambda r: r.data.metrics["best_val_loss"])
    assert best.data.tags["rnnsweep.outcome"] == "OK"
    assert best.data.metrics["steps_done"] == 150
    assert "stopped early" in result.stdout
    # The report shows where each trial stopped.
    parent = next(r for r in mlflow_store.runs() if r.data.tags.get("rnnsweep.role") == "sweep")
    report = mlflow_store.client.download_artifacts(parent.info.run_id, "report.md", tmp_path)
    with open(report) as handle:
        text = handle.read()
    assert "ended early, where they stopped" in text
    for lr in ("1e-05", "3e-06"):
        assert f"STOPPED at step {runs[lr].data.tags['rnnsweep.stopped_at_step']} of 150" in text


@pytest.mark.slow
def test_a_single_run_has_its_trials_duration_and_time_limit(mlflow_store, tmp_path):
    single = [a for a in LONG if a != "-m"]
    began = time.time()
    result = run_cli([*single, "steps=20000", "trial_timeout_s=10",
                      *cli_paths(mlflow_store, tmp_path)], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (run,) = mlflow_store.runs()
    assert run.data.tags["rnnsweep.outcome"] == "TIMED_OUT"
    assert run.info.status == "KILLED"
    duration = (run.info.end_time - run.info.start_time) / 1e3
    assert 10 <= duration < 10 + 8, duration
    assert run.info.start_time / 1e3 >= began
    assert "final_loss" in run.data.metrics


@pytest.mark.slow
def test_a_locked_store_drops_live_values_but_loses_no_step(mlflow_store, tmp_path):
    import sqlite3

    # Long enough that several live batches come while the store is held (on a quiet
    # machine this model trains 600 steps in about two seconds).
    steps = 5000
    proc = start_cli([*LONG, f"steps={steps}", "seed=5", "tracking.live_queue=40",
                      *cli_paths(mlflow_store, tmp_path)], tmp_path, merge_output=True)
    try:
        run = wait_for(lambda: _only_child(mlflow_store), 120, "the trial's run")
        wait_for(lambda: len(_steps(mlflow_store, run.info.run_id)) >= 20, 120, "20 steps")
        # Another writer holds the store: live batches queue, overflow and fail meanwhile.
        db = sqlite3.connect(mlflow_store.path, timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        time.sleep(8)
        db.execute("COMMIT")
        db.close()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    run = mlflow_store.client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert "live values could not be written" in run.data.tags["rnnsweep.live.dropped"]
    assert _steps(mlflow_store, run.info.run_id) == list(range(steps))


@pytest.mark.slow
def test_checkpoints_on_the_run_resume_a_sweep_whose_nodes_share_no_directory(mlflow_store,
                                                                                tmp_path):
    """checkpoint.store=artifacts: saves travel to the driver and onto the trial's run;
    the rerun after the driver died resumes from the run's copy, not a local file."""
    import shutil

    from rnnsweep.trial.checkpoint import relayed_dir

    steps = 400
    args = [*LONG, f"steps={steps}", "seed=6", "checkpoint.every_steps=25",
            "checkpoint.store=artifacts", "tracking.live_interval_s=0.5",
            *cli_paths(mlflow_store, tmp_path)]
    proc = start_cli(args, tmp_path, merge_output=True)
    try:
        run = wait_for(lambda: _only_child(mlflow_store), 120, "the trial's run")
        wait_for(lambda: "checkpoint" in {a.path for a in mlflow_store.client.list_artifacts(
            run.info.run_id)} and len(_steps(mlflow_store, run.info.run_id)) >= 120, 240,
            "a checkpoint on the run and 120 steps")
        workers = trial_pids(0, root=proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in workers), 60,
                 "the orphaned worker to end")
    finally:
        if proc.poll() is None:
            proc.kill()
    # As if the rerun's trial landed on another node: nothing of it is on this disk.
    shutil.rmtree(relayed_dir(run.data.tags["rnnsweep.config_hash"]), ignore_errors=True)
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    new = [r for r in _children(mlflow_store) if r.info.run_id != run.info.run_id]
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    resumed = int(new[0].data.tags["rnnsweep.resumed_from_step"])
    assert resumed >= 25 and resumed % 25 == 0
    assert _steps(mlflow_store, new[0].info.run_id) == list(range(steps))

"""rnnsweep's own Optuna sweeper, ``hydra/sweeper=rnnsweep_optuna``.

Fast tier: the search space in Hydra's Optuna syntax, and every bad input refused by the
checks the CLI runs before anything starts. Slow tier (real Ray, a real SQLite MLflow
store, real Optuna storages): pruning of parallel trials, a journal study killed and
resumed, Optuna's best against the parent's, duplicate proposals, the direction check.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_paths, run_cli, start_cli, wait_for
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from rnnsweep.preflight.validation import ConfigError, check_overrides
from rnnsweep.search import checks, space

optuna = pytest.importorskip("optuna")

SWEEPER = ["-m", "hydra/sweeper=rnnsweep_optuna", "hydra.sweeper.n_jobs=2"]
# Tiny training trials, one CPU each so that two run at once on this 2-core machine.
TINY = ["task=regression", "workload=train", "steps=40", "model.hidden_size=16",
        "model.input_size=8", "seq_len=10", "batch=8", "hardware.num_cpus=1",
        "objective.metric=final_loss"]
LIVE = "job_tags" in (Path(__file__).parents[1] / "rnnsweep/sweep/launcher.py").read_text()
needs_live_values = pytest.mark.skipif(
    not LIVE, reason="needs the launcher's live intermediate values and job tags (issue 19 "
    "item 1: rnnsweep/sweep/launcher.py's stopper and job_tags)")


# --- the search space (no Ray, no store) ---------------------------------------------------


def test_hydra_optuna_syntax_maps_to_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    parsed = space.parse(["batch=choice(4,8,16)", "model=lstm,gru",
                          "task.lr=tag(log, interval(1e-4, 1e-1))", "seq_len=range(10,41,10)",
                          "model.hidden_size=tag(int, interval(16, 64))",
                          "guard.explode_threshold=interval(10, 20)", "steps=5", "+extra=1"])
    d = parsed.distributions
    assert d["batch"] == CategoricalDistribution([4, 8, 16])
    assert d["model"] == CategoricalDistribution(["lstm", "gru"])
    assert d["task.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    # Hydra's range excludes its stop, as the basic sweeper runs it: 10, 20, 30, 40.
    assert d["seq_len"] == IntDistribution(10, 40, step=10)
    assert d["model.hidden_size"] == IntDistribution(16, 64)
    assert d["guard.explode_threshold"] == FloatDistribution(10.0, 20.0)
    assert parsed.fixed == {"steps": "5", "+extra": "1"}
    overrides = parsed.overrides({"batch": 8, "model": "gru", "task.lr": 0.001, "seq_len": 30,
                                  "model.hidden_size": 32, "guard.explode_threshold": 12.5})
    assert overrides == ("batch=8", "model=gru", "task.lr=0.001", "seq_len=30",
                         "model.hidden_size=32", "guard.explode_threshold=12.5", "steps=5",
                         "+extra=1")


def test_the_grid_is_every_discrete_value_and_refuses_an_interval():
    parsed = space.parse(["batch=choice(4,8)", "seq_len=range(10,31,10)"])
    assert parsed.grid() == {"batch": [4, 8], "seq_len": [10, 20, 30]}
    with pytest.raises(space.SpaceError, match="task.lr: hydra.sweeper.sampler=grid"):
        space.parse(["task.lr=interval(0.1, 0.2)"]).grid()


def test_a_later_override_of_a_key_wins():
    parsed = space.parse(["batch=choice(4,8)", "batch=16"])
    assert parsed.distributions == {} and parsed.fixed == {"batch": "16"}


# --- bad input: one line naming the key, before anything starts ----------------------------


def _checked(overrides: list[str]):
    return check_overrides(overrides, True, whole=False)


BAD = {
    "sampler": (["hydra.sweeper.sampler=bayes"], ["hydra.sweeper.sampler=bayes",
                                                  "tpe, cmaes, random, grid, nsga2"]),
    "pruner": (["hydra.sweeper.pruner=asha"], ["hydra.sweeper.pruner=asha",
                                               "none, median, successive_halving, hyperband"]),
    "direction": (["hydra.sweeper.direction=maximize"],
                   ["hydra.sweeper.direction=maximize", "objective.direction=minimize"]),
    "metric never produced": (["objective.metric=latency_ms"],
                              ["objective.metric=latency_ms", "never records", "final_loss"]),
    "misspelt metric": (["objective.metric=final_los"], ["objective.metric=final_los"]),
    "pruning a metric not live": (
        ["hydra.sweeper.pruner=median", "objective.metric=train_seq_per_s"],
        ["hydra.sweeper.pruner=median", "objective.metric=train_seq_per_s", "val_loss"]),
    "pruning without training": (
        ["hydra.sweeper.pruner=median", "workload=bench", "objective.metric=latency_ms"],
        ["hydra.sweeper.pruner=median", "does not train"]),
    "launcher stopper and a pruner": (["hydra.launcher.stopper=asha"],
                                      ["hydra.launcher.stopper=asha", "hydra.sweeper.pruner"]),
    "second metric": (["hydra.sweeper.sampler=nsga2", "hydra.sweeper.second_objective=gflops"],
                      ["hydra.sweeper.second_objective=gflops", "never records"]),
    "pruning two objectives": (
        ["hydra.sweeper.second_objective=step_time_ms", "hydra.sweeper.pruner=median"],
        ["hydra.sweeper.pruner=median", "single-objective"]),
    "cmaes two objectives": (
        ["hydra.sweeper.second_objective=step_time_ms", "hydra.sweeper.sampler=cmaes"],
        ["hydra.sweeper.sampler=cmaes"]),
    "reduction factor": (["hydra.sweeper.reduction_factor=1"],
                         ["hydra.sweeper.reduction_factor=1", ">= 2"]),
    "min resource": (["hydra.sweeper.min_resource=400"], ["hydra.sweeper.min_resource=400",
                                                          "steps=40"]),
    "grid of an interval": (["hydra.sweeper.sampler=grid", "task.lr=interval(0.001,0.01)"],
                            ["task.lr", "grid"]),
    "no search space": (["batch=8"], ["no search space"]),
    "journal folder": (["hydra.sweeper.storage=/no/such/dir/study.log"],
                       ["hydra.sweeper.storage=/no/such/dir/study.log", "cannot be opened"]),
    "rdb driver": (["hydra.sweeper.storage=nosuchdb://host/db"],
                   ["hydra.sweeper.storage=nosuchdb://host/db", "cannot be opened"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_refused_by_the_up_front_check(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra, words = BAD[name]
    search = [] if any(o.startswith("batch=") for o in extra) else ["batch=choice(4,8)"]
    overrides = ["hydra/sweeper=rnnsweep_optuna", *search,
                 *(o for o in TINY if o != "batch=8"), *extra]
    with pytest.raises(ConfigError) as caught:
        checked = _checked(overrides)
        checks.check(checked.base, overrides)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    assert list(tmp_path.iterdir()) == []  # nothing created, not even a storage


def test_a_good_command_passes_and_another_sweeper_is_not_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = ["hydra/sweeper=rnnsweep_optuna", *TINY, "batch=choice(4,8)",
            f"hydra.sweeper.storage={tmp_path}/study.log", "hydra.sweeper.pruner=hyperband"]
    checks.check(_checked(good).base, good)
    other = ["batch=4,8", *(o for o in TINY if o != "batch=8")]
    # The basic sweeper: nothing of Optuna's is asked (this space would not even parse).
    checks.check(_checked(other).base, ["batch=interval(1,"])


# --- end to end: real Ray, real MLflow, real Optuna storages ------------------------------


def study_of(storage: str, name: str = "rnnsweep"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    store = storage if "://" in storage else JournalStorage(JournalFileBackend(storage))
    return optuna.load_study(study_name=name, storage=store)


def parents_and_children(store):
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get("rnnsweep.role") == "sweep"]
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    return parents, children


@pytest.mark.slow
def test_best_value_agrees_with_the_parent_and_duplicates_are_counted(mlflow_store, tmp_path):
    """Two values of batch and five trials: at least three proposals repeat a trial.
    Each configuration runs once; the parent counts exactly the duplicates it tags."""
    db = f"sqlite:///{tmp_path}/optuna.db"
    result = run_cli([*SWEEPER, "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler=random",
                      "hydra.sweeper.seed=1", f"hydra.sweeper.storage={db}",
                      *[o for o in TINY if o != "batch=8"], "batch=choice(4,8)",
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    (parent,), children = parents_and_children(mlflow_store)
    study = study_of(db)
    trials = study.trials
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    ran = [t for t in trials if "rnnsweep.duplicate_of" not in t.user_attrs]
    copies = [t for t in trials if "rnnsweep.duplicate_of" in t.user_attrs]
    # One child run per distinct configuration, never two runs of one.
    assert len(children) == len(ran) == len({c.data.params["batch"] for c in children}) <= 2
    tags = {k: v for k, v in parent.data.tags.items()
            if k.startswith("rnnsweep.optuna.duplicate.")}
    assert parent.data.metrics["optuna_duplicates"] == len(tags) == len(copies) >= 3
    for copy in copies:
        original = study.trials[copy.user_attrs["rnnsweep.duplicate_of"]]
        assert copy.params == original.params and copy.values == original.values
        assert tags[f"rnnsweep.optuna.duplicate.{copy.number}"] == str(original.number)
    # Optuna's best is the parent's best, both read from the records.
    assert study.best_value == pytest.approx(parent.data.metrics["best_objective"])
    assert parent.data.metrics["optuna_best_value"] == pytest.approx(study.best_value)
    best_run = parent.data.tags["rnnsweep.objective.best_run"]
    assert study.best_trial.user_attrs["rnnsweep.run_id"] == best_run
    assert f"best value {study.best_value:.6g}" in result.stdout
    assert parent.data.metrics["trials"] == len(children)


@pytest.mark.slow
def test_direction_disagreement_is_refused_before_anything_starts(mlflow_store, tmp_path):
    result = run_cli([*SWEEPER, "hydra.sweeper.direction=maximize", "batch=choice(4,8)",
                      *[o for o in TINY if o != "batch=8"],
                      f"hydra.sweeper.storage={tmp_path}/s.log",
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    # The CLI's generic objective check or the sweeper's own: either names both settings.
    assert line.startswith("rnnsweep: error: hydra.sweeper.direction=maximize: ")
    assert "objective.direction=minimize" in line
    assert mlflow_store.runs() == [] and not (tmp_path / "s.log").exists()
    assert not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_maximize_comes_from_the_objective(mlflow_store, tmp_path):
    """The issue's case: throughput maximised, with no sweeper direction to forget."""
    journal = tmp_path / "study.log"
    result = run_cli([*SWEEPER, "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={journal}",
                      "batch=choice(4,16)", "hydra.sweeper.sampler=grid",
                      *[o for o in TINY if o not in ("batch=8", "objective.metric=final_loss")],
                      "objective.metric=train_seq_per_s", "objective.direction=maximize",
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    study = study_of(str(journal))
    assert [d.name for d in study.directions] == ["MAXIMIZE"]
    (parent,), children = parents_and_children(mlflow_store)
    best = max(c.data.metrics["train_seq_per_s"] for c in children)
    assert study.best_value == pytest.approx(best) == parent.data.metrics["best_objective"]


@pytest.mark.slow
def test_a_killed_study_resumes_and_continues_its_trial_numbers(mlflow_store, tmp_path):
    journal = tmp_path / "study.log"
    args = [*SWEEPER, "hydra.sweeper.n_trials=6", "hydra.sweeper.seed=5",
            f"hydra.sweeper.storage={journal}", *[o for o in TINY if o != "steps=40"],
            "steps=200", "task.lr=tag(log, interval(1e-4, 1e-1))",
            *cli_paths(mlflow_store, tmp_path)]
    driver = start_cli(args, tmp_path)
    try:
        def mid_sweep():
            trials = study_of(str(journal)).trials
            done = [t for t in trials if t.state.name == "COMPLETE"]
            running = [t for t in trials if t.state.name == "RUNNING"]
            return len(done) >= 2 and running
        wait_for(mid_sweep, 240, "a finished batch and a running one")
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver this test started, by its pid
        driver.communicate(timeout=60)
    before = study_of(str(journal)).trials
    left_running = [t.number for t in before if t.state.name == "RUNNING"]
    assert left_running
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    after = study_of(str(journal)).trials
    assert [t.number for t in after] == list(range(len(after)))
    for number in left_running:  # the dead driver's trials, marked failed, not lost
        assert after[number].state.name == "FAIL"
        assert "died" in after[number].user_attrs["rnnsweep.lost"]
    new = [t for t in after if t.number >= len(before)]
    assert new and min(t.number for t in new) == len(before)  # numbers continue
    counted = [t for t in after if t.state.is_finished() and "rnnsweep.lost" not in t.user_attrs]
    assert len(counted) == 6
    assert f"resumed with {len(counted) - len(new)} trials done" in result.stdout
    sweeps = {t.user_attrs.get("rnnsweep.sweep") for t in after}
    assert len(sweeps) == 2  # two parents, one per driver


@pytest.mark.slow
@needs_live_values
def test_pruned_parallel_trials_end_stopped_in_mlflow_and_pruned_in_optuna(mlflow_store,
                                                                          tmp_path):
    """Learning rates far apart on `regression`, two trials at a time: successive halving
    prunes the bad ones at its rungs as their live values arrive."""
    journal = tmp_path / "study.log"
    result = run_cli([*SWEEPER, "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler=grid",
                      "hydra.sweeper.seed=0", "hydra.sweeper.pruner=successive_halving",
                      "hydra.sweeper.min_resource=5",
                      "hydra.sweeper.reduction_factor=2", f"hydra.sweeper.storage={journal}",
                      "task.lr=choice(0.00001,0.00002,0.00003,0.01,0.02,0.03)",
                      # Values sent every 50 ms (3 s by default, longer than these trials).
                      # final_loss is judged by the live training loss at every step.
                      "tracking.live_interval_s=0.05", "steps=400",
                      *[o for o in TINY if not o.startswith("steps=")],
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    study = study_of(str(journal))
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned
    (parent,), children = parents_and_children(mlflow_store)
    by_number = {c.data.tags["rnnsweep.optuna.trial_number"]: c for c in children}
    assert set(by_number) == {str(t.number) for t in study.trials}
    for trial in pruned:
        run = by_number[str(trial.number)]
        assert run.data.tags["rnnsweep.outcome"] == "STOPPED"
        assert int(run.data.tags["rnnsweep.stopped_at_step"]) < 400
        assert "optuna successive_halving pruner" in run.data.tags["rnnsweep.reason"]
        assert trial.intermediate_values  # the live values it was judged on
    assert parent.data.metrics["optuna_pruned"] == len(pruned)
    # Successive halving keeps the better half at each rung of the trials there at the
    # time, so an early rung may cut a fast learner too; the slow ones never win.
    slow = [t for t in study.trials if t.params["task.lr"] < 1e-3]
    assert any(t.state.name == "PRUNED" for t in slow)
    assert study.best_trial.params["task.lr"] > 1e-3
    best = study.best_trial
    assert by_number[str(best.number)].data.tags["rnnsweep.outcome"] == "OK"
    assert study.best_value == pytest.approx(parent.data.metrics["best_objective"])


@pytest.mark.slow
def test_the_dashboard_serves_a_journal_study_on_loopback(tmp_path):
    """optuna-dashboard, as the README starts it, serves the journal file rnnsweep writes,
    and sees a trial told after it started (live)."""
    import json
    import socket
    import time
    import urllib.request

    journal = tmp_path / "study.log"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="rnnsweep", storage=storage)
    study.tell(study.ask(), 1.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).with_name("optuna-dashboard")), str(journal),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def trials_served():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                        timeout=5) as answer:
                studies = json.load(answer)["study_summaries"]
            return {s["study_name"]: s for s in studies}

        assert "rnnsweep" in wait_for(trials_served, 60, "the dashboard's studies")
        study.tell(study.ask(), 0.5)  # told while the dashboard runs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/0",
                                        timeout=5) as answer:
                if len(json.load(answer)["trials"]) == 2:
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("the dashboard never showed the second trial")
    finally:
        dashboard.terminate()  # the server this test started, by its handle
        dashboard.wait(timeout=30)
    assert math.isclose(study.best_value, 0.5)

"""Hydra's own Optuna sweeper (hydra-optuna-sweeper, optional) drives rnnsweep's Ray
launcher on the embedded Ray.

The task function hands Optuna ``objective.metric``; the records still go to MLflow,
every trial a child of one parent, the best value logged there; a sweeper that raises
leaves the parent closed, never RUNNING.
"""

from __future__ import annotations

import re

import pytest
from conftest import TOY, cli_paths, run_cli
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

pytestmark = pytest.mark.slow
# Hydra's own Optuna sweeper pins optuna<3; rnnsweep's install no longer brings it (its own
# sweeper, hydra/sweeper=rnnsweep_optuna, is tested in test_optuna_sweeper.py). These tests
# run where it is installed, in an environment of its own.
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                    reason="hydra-optuna-sweeper is not installed (it needs optuna<3)")

OPTUNA = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=tpe",
          "hydra.sweeper.sampler.seed=7", "hydra.sweeper.n_jobs=2"]
# Timed trials packed two at a time on one CPU each (the test asks for no whole device).
TRIALS = [*TOY, "workload=bench", "hardware.num_cpus=1", "hardware.exclusive=false"]


def parents_and_children(store):
    runs = store.runs()
    parents = [r for r in runs if r.data.tags.get("rnnsweep.role") == "sweep"]
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    return parents, children


def test_tpe_six_trials_two_at_a_time(mlflow_store, tmp_path):
    result = run_cli([*OPTUNA, "hydra.sweeper.n_trials=6", "batch=range(1,33)",
                      "objective.metric=throughput_seq_per_s", "objective.direction=maximize",
                      "hydra.sweeper.direction=maximize", "ray.rerun=true", *TRIALS,
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Return value must be float-castable" not in result.stdout + result.stderr
    # n_jobs at a time: each launch adds two trials to the console's count.
    counts = re.findall(r"\((\d+)/(\d+) done", result.stdout)
    assert [(int(d), int(n)) for d, n in counts] == [(1, 2), (2, 2), (3, 4), (4, 4),
                                                     (5, 6), (6, 6)], result.stdout
    (parent,), children = parents_and_children(mlflow_store)
    assert len(children) == 6
    assert {c.data.tags[MLFLOW_PARENT_RUN_ID] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" and c.data.tags["rnnsweep.outcome"] == "OK"
               for c in children)
    assert parent.info.status == "FINISHED"
    best = max(c.data.metrics["throughput_seq_per_s"] for c in children)
    assert parent.data.metrics["best_objective"] == pytest.approx(best)
    best_run = parent.data.tags["rnnsweep.objective.best_run"]
    assert best_run in {c.info.run_id for c in children}
    assert parent.data.tags["rnnsweep.objective"] == "throughput_seq_per_s (maximize)"
    # Optuna's own verdict is the value rnnsweep returned for the best trial.
    optuna_best = float(re.search(r"Best value: (\S+)", result.stdout + result.stderr)[1])
    assert optuna_best == pytest.approx(best)
    assert f"best throughput_seq_per_s (maximize): {best:.6g}" in result.stdout


def test_failed_trials_give_the_worst_value_not_an_exception(mlflow_store, tmp_path):
    result = run_cli([*OPTUNA, "hydra.sweeper.n_trials=2", "batch=range(1,9)",
                      "guard.raise_at_step=0", "workload=train", "objective.metric=final_loss",
                      *[o for o in TRIALS if o != "workload=bench"],
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert "Return value must be float-castable" not in output
    assert "Best value: inf" in output  # Optuna took +inf (minimize) for each failure
    assert result.returncode == 1  # failed trials fail the command, as in any sweep
    (parent,), children = parents_and_children(mlflow_store)
    assert len(children) == 2 and all(c.info.status == "FAILED" for c in children)
    assert parent.info.status == "FAILED"


def test_a_sweeper_that_raises_leaves_no_parent_running(mlflow_store, tmp_path):
    # Optuna cannot open this study storage: the sweeper raises after the parent exists.
    result = run_cli([*OPTUNA, "hydra.sweeper.n_trials=2", "batch=range(1,9)",
                      f"hydra.sweeper.storage=sqlite:///{tmp_path}/no/such/dir/optuna.db",
                      *TRIALS, *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    assert result.returncode != 0
    (parent,), _ = parents_and_children(mlflow_store)
    assert parent.info.status == "FAILED"
    assert "sweeper" in parent.data.tags["rnnsweep.reason"]

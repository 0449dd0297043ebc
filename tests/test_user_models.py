"""Users' own models and data: ``_target_`` configs from their own config directory, the
up-front checks of what they name, the char-level LM task, and the sweeper objective.

The user's package is written into a temporary directory and put on ``sys.path``, as a
user's would be: nothing here is a stand-in for Hydra, torch or MLflow.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from conftest import TOY, compose_cfg

from rnnsweep.config.command import parse
from rnnsweep.preflight.validation import ConfigError, check_overrides
from rnnsweep.record import FAILED, OK, UNSUPPORTED, TrialRecord
from rnnsweep.sweep import objective
from rnnsweep.trial.run import run_trial

USER_PACKAGE = '''
import torch
from torch import nn


class TinyGRU(nn.Module):
    """A user's model: a GRU and a head, returning (prediction, hidden)."""

    def __init__(self, input_size, hidden_size, output_size, bias=True):
        super().__init__()
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True, bias=bias)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        hidden, _ = self.rnn(x)
        return self.head(hidden), hidden


class LastStepOnly(TinyGRU):
    """Breaks the contract: one output per sequence, not per timestep."""

    def forward(self, x):
        hidden, _ = self.rnn(x)
        return self.head(hidden[:, -1])


class Sized(TinyGRU):
    """Declares its size in its own words: no hidden_size, num_layers or cell."""

    def __init__(self, input_size, width, output_size):
        super().__init__(input_size, width, output_size)


class Mean:
    """A user's batch source: predict the running mean of channel 0."""

    def __init__(self, batch, seq_len, input_size, device, seed, scale=1.0):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.output_size = 1
        self.x = scale * torch.randn(batch, seq_len, input_size, generator=gen, device=device)
        steps = torch.arange(1, seq_len + 1, device=device).view(1, -1)
        self.y = (self.x[:, :, 0].cumsum(1) / steps).unsqueeze(-1)

    def batch(self, step):
        return self.x, self.y

    def loss(self, prediction, target):
        return torch.nn.functional.mse_loss(prediction.float(), target)

    def summary(self, final_loss):
        return {"rmse": final_loss ** 0.5}
'''

MODEL_CONFIGS = {
    "tiny_gru": "_target_: usermods.TinyGRU\ninput_size: 8\nhidden_size: 16\n",
    "last_step": "_target_: usermods.LastStepOnly\ninput_size: 8\nhidden_size: 16\n",
    "no_import": "_target_: no_such_package.Model\ninput_size: 8\nhidden_size: 16\n",
    "own_words": "_target_: usermods.Sized\ninput_size: 8\nwidth: 16\n",
    "huge": "_target_: usermods.TinyGRU\ninput_size: 8\nhidden_size: 100000000\n",
    "bad_keys": "_target_: usermods.TinyGRU\ninput_size: 8\nhidden_size: 16\nwidth: 3\n",
    # Extends rnnsweep's own schema: a built-in GRU at a size of the user's choosing.
    "my_gru": "defaults:\n  - /builtin_model_schema@_here_\n  - _self_\ncell: gru\n"
              "hidden_size: 24\n",
}
TASK_CONFIGS = {
    "running_mean": "_target_: usermods.Mean\nname: running_mean\nlr: 0.01\nscale: 2.0\n",
    "default_lr": "_target_: usermods.Mean\nname: default_lr\n",
}
USER_TOY = [o for o in TOY if not o.startswith("model.")]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """A user's package (``usermods``) and config directory (``conf/``)."""
    root = tmp_path_factory.mktemp("user")
    (root / "usermods.py").write_text(textwrap.dedent(USER_PACKAGE))
    for group, configs in (("model", MODEL_CONFIGS), ("task", TASK_CONFIGS)):
        (root / "conf" / group).mkdir(parents=True)
        for name, text in configs.items():
            (root / "conf" / group / f"{name}.yaml").write_text(text)
    return root


@pytest.fixture
def user(user_dir, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(user_dir))
    return user_dir


def checked(user: Path, *args: str):
    """Validation of a command line that names the user's config directory."""
    command = parse(["--config-dir", str(user / "conf"), *args])
    return check_overrides(command.overrides, command.multirun, command)


# --- the built-ins are _target_ configs ----------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_builtin_models_are_target_configs_with_todays_defaults(cell):
    model = compose_cfg([f"model={cell}"]).model
    assert model._target_ == "rnnsweep.trial.models.RecurrentNet"
    assert (str(model.cell), model.input_size, model.hidden_size, model.num_layers,
            str(model.impl), model.recurrent_init_scale) == (cell, 128, 256, 1, "fused", 1.0)


def test_builtin_keys_stay_typed_overrides():
    assert str(compose_cfg(["model.cell=gru"]).model.cell) == "gru"
    with pytest.raises(ConfigError, match="model.cell"):
        check_overrides(["model.cell=transformer"], False)


def test_appending_a_target_to_a_builtin_is_refused_not_ignored():
    """It used to be accepted silently while the built-in LSTM ran."""
    with pytest.raises(ConfigError, match=r"\+model._target_=mymodule.MyRNN: .*already set"):
        check_overrides(["+model._target_=mymodule.MyRNN"], False)
    # Set without '+', the built-in's keys reach the named class, which must accept them.
    with pytest.raises(ConfigError, match="mymodule.MyRNN: cannot import it"):
        check_overrides(["model._target_=mymodule.MyRNN"], False)


# --- a user's model from a config directory ------------------------------------------------


def test_config_dir_options_are_validated_up_front(user):
    base = checked(user, "model=my_gru").trials[0]
    assert (str(base.model.cell), base.model.hidden_size) == ("gru", 24)
    with pytest.raises(ConfigError, match="allowed: .*my_gru"):
        checked(user, "model=nope")
    with pytest.raises(ConfigError, match="model=my_gru: no such model"):
        check_overrides(["model=my_gru"], False)  # without the user's directory


def test_user_model_trial_is_built_from_its_target(user):
    cfg = checked(user, "model=tiny_gru", *USER_TOY).trials[0]
    record = run_trial(cfg)
    assert record.outcome == OK, record.reason
    assert record.params["model._target_"] == "usermods.TinyGRU"
    assert {"final_loss", "latency_ms", "gflops"} <= record.metrics.keys()
    # nn.GRU on CPU is matrix products the counter sees: no formula needed.
    assert record.tags["rnnsweep.flops_source"] == "flop_counter"
    # GRU 8 -> 16 and a 16 -> 1 head, 10 steps: 6H(I+H) + 2H per step.
    assert record.metrics["forward_flops_per_seq"] == (6 * 16 * (8 + 16) + 2 * 16) * 10


@pytest.mark.parametrize("workload, words", [
    (["workload=deploy"], "carries its state"),
    (["workload=bench", "workload.compare_impl=true"], "built-in models"),
])
def test_workloads_that_need_a_builtin_are_unsupported(user, workload, words):
    record = run_trial(checked(user, "model=tiny_gru", *USER_TOY, *workload).trials[0])
    assert record.outcome == UNSUPPORTED
    assert words in record.reason and "usermods.TinyGRU" in record.reason


@pytest.mark.parametrize("args, words", [
    (["model=no_import"], ["model._target_=no_such_package.Model", "cannot import",
                           "No module named 'no_such_package'"]),
    # Checked against the constructor before it is built: the key, then its parameters.
    (["model=bad_keys"], ["model.width: usermods.TinyGRU takes no such parameter",
                          "bias, hidden_size, input_size"]),
    (["model=last_step"], ["model._target_=usermods.LastStepOnly", "output shape (2, 1)",
                           "expected (2, 10, 1)"]),
    (["task=char_lm", "task.path=/no/such/book.txt"], ["task.path=/no/such/book.txt",
                                                       "no such file"]),
    (["task=char_lm", "model.input_size=8"], ["model.input_size=8", "needs >= 63"]),
    (["-m", "model=tiny_gru,last_step"], ["usermods.LastStepOnly", "output shape"]),
])
def test_bad_user_targets_are_one_line_errors(user, args, words):
    toy = [o for o in USER_TOY if o.split("=")[0] not in {a.split("=")[0] for a in args}]
    with pytest.raises(ConfigError) as err:
        checked(user, *toy, *args)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bounds_check_only_what_a_user_config_declares(user):
    """No hidden_size, num_layers, cell or task.lr: those checks are skipped, the rest
    still run; a declared size still gets the memory estimate."""
    cfg = checked(user, "model=own_words", "task=default_lr", *USER_TOY).trials[0]
    assert "hidden_size" not in cfg.model and "lr" not in cfg.task
    with pytest.raises(ConfigError, match=r"^steps=10000000: must be"):
        checked(user, "model=own_words", "task=default_lr", *USER_TOY, "steps=10000000")
    with pytest.raises(ConfigError, match=r"^model.hidden_size=100000000, batch=.*needs about"):
        checked(user, "model=huge", *USER_TOY)


# --- a user's data, and the char-level language model --------------------------------------


def test_user_task_builds_its_source_and_reports_its_summary(user):
    cfg = checked(user, "model=tiny_gru", "task=running_mean", *USER_TOY,
                  "workload=train").trials[0]
    record = run_trial(cfg)
    assert record.outcome == OK, record.reason
    assert record.metrics["rmse"] == pytest.approx(math.sqrt(record.metrics["final_loss"]))


def test_char_lm_learns_the_bundled_corpus():
    cfg = compose_cfg(["task=char_lm", "task.lr=0.02", "model.input_size=64",
                       "model.hidden_size=32", "seq_len=24", "batch=8", "steps=25",
                       "workload=train"])
    record = run_trial(cfg)
    assert record.outcome == OK, record.reason
    loss = record.step_metrics["loss"]
    # An untrained model predicts about uniformly over the 63 characters of the corpus.
    assert loss[0] == pytest.approx(math.log(63), abs=0.3)
    assert loss[-1] < loss[0] - 0.5  # it learns the character frequencies at least
    assert record.metrics["bits_per_char"] == pytest.approx(loss[-1] / math.log(2))


def test_char_lm_reads_any_text_file(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("abcab" * 50)
    cfg = compose_cfg(["task=char_lm", f"task.path={book}", "model.input_size=3",
                       "model.hidden_size=8", "seq_len=6", "steps=2", "workload=train"])
    record = run_trial(cfg)
    assert record.outcome == OK, record.reason
    assert record.step_metrics["loss"][0] == pytest.approx(math.log(3), abs=0.3)


# --- the objective a sweeper sees ----------------------------------------------------------


def test_objective_is_the_named_metric_or_the_worst_value():
    cfg = compose_cfg(["objective.metric=throughput_seq_per_s",
                       "objective.direction=maximize"])
    ok = TrialRecord(params={}, metrics={"throughput_seq_per_s": 1234.5})
    assert objective.value(cfg, ok) == 1234.5
    failed = TrialRecord(params={}, metrics={"throughput_seq_per_s": 9.0}, outcome=FAILED)
    assert objective.value(cfg, failed) == -math.inf
    assert objective.value(cfg, TrialRecord(params={}, outcome=UNSUPPORTED)) == -math.inf
    missing = TrialRecord(params={}, metrics={"latency_ms": 1.0})
    assert objective.value(compose_cfg([]), missing) == 1.0  # the default: latency_ms
    # The default follows the workload: a training-only trial is scored by its best
    # held-out loss (a user's task, which may have no held-out set, by its final loss).
    assert objective.settings(compose_cfg(["workload=train"])) == ("best_val_loss", "minimize")
    assert objective.settings(compose_cfg(["workload=deploy"]))[0] == "stream_latency_ms_p50"
    assert objective.value(cfg, missing) == -math.inf
    minimize = compose_cfg(["objective.metric=final_loss"])
    assert objective.value(minimize, TrialRecord(params={}, outcome=FAILED)) == math.inf


def test_task_function_returns_the_objective_and_records_the_trial(mlflow_store, tmp_path,
                                                                 monkeypatch):
    from rnnsweep.sweep.context import SweepContext
    from rnnsweep.sweep.job import SweepTask

    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg([*TOY, f"tracking.uri={mlflow_store.uri}", "workload=train",
                       "objective.metric=final_loss"])
    # A single run: the trial is recorded in this process, by the context the CLI makes.
    with SweepContext.for_sweep(cfg, [], multirun=False) as context:
        value = SweepTask(context)(cfg)
    assert isinstance(value, float)
    (run,) = mlflow_store.runs()
    assert run.data.metrics["final_loss"] == pytest.approx(value)


def test_objective_direction_must_match_the_sweepers():
    with pytest.raises(ConfigError, match="hydra.sweeper.direction=maximize.*objective"):
        check_overrides(["hydra/sweeper=rnnsweep_optuna", "hydra.sweeper.direction=maximize"], True)
    check_overrides(["hydra/sweeper=rnnsweep_optuna", "hydra.sweeper.direction=maximize",
                     "objective.direction=maximize", *TOY], True)


def test_optuna_ranges_are_checked_at_both_ends():
    with pytest.raises(ConfigError, match="batch=0"):
        check_overrides(["hydra/sweeper=rnnsweep_optuna", "batch=tag(int, interval(0, 8))", *TOY],
                        True)
    trials = check_overrides(["hydra/sweeper=rnnsweep_optuna", "batch=tag(int, interval(1, 8))",
                              *TOY], True).trials
    assert sorted(t.batch for t in trials) == [1, 8]


# --- the example, end to end ---------------------------------------------------------------


@pytest.mark.slow
def test_example_user_model_sweeps_end_to_end(mlflow_store, tmp_path):
    """``examples/user_model/sweep.sh``, as the README tells a new user to run it (toy
    sizes appended: on the command line the last value of a key wins)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(REPO)
    script = REPO / "examples" / "user_model" / "sweep.sh"
    result = subprocess.run(
        [str(script), "steps=2", "seq_len=10", "min_run_time=0.05", "warmup=1",
         f"tracking.uri={mlflow_store.uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    children = [r for r in mlflow_store.runs() if "mlflow.parentRunId" in r.data.tags]
    models = sorted((r.data.params["model._target_"], r.data.params["model.hidden_size"])
                    for r in children)
    assert models == [("mymodels.IndRNN", "128"), ("mymodels.IndRNN", "64"),
                      ("rnnsweep.trial.models.RecurrentNet", "128"),
                      ("rnnsweep.trial.models.RecurrentNet", "64")]
    for run in children:
        assert run.data.tags["rnnsweep.outcome"] == "OK", run.data.tags.get("rnnsweep.reason")
        assert run.data.params["task.name"] == "char_lm" and run.data.params["steps"] == "2"
        assert run.data.metrics["bits_per_char"] > 0 and run.data.metrics["latency_ms"] > 0


def test_best_trial_is_logged_on_the_parent(mlflow_store, capsys):
    from rnnsweep.tracking import Tracker

    mlflow_store.experiment("rnnsweep")
    tracker = Tracker(mlflow_store.uri, "rnnsweep")
    parent = tracker.start_run("sweep")
    values = {"a": (OK, 10.0), "b": (OK, 30.0), "c": (FAILED, 99.0), "d": (UNSUPPORTED, None)}
    ids = {}
    for name, (outcome, value) in values.items():
        ids[name] = tracker.start_run(name, parent_run_id=parent)
        metrics = {} if value is None else {"throughput_seq_per_s": value}
        tracker.write_record(ids[name], TrialRecord(params={}, metrics=metrics,
                                                    tags={"rnnsweep.outcome": outcome},
                                                    outcome=outcome))
    cfg = compose_cfg(["objective.metric=throughput_seq_per_s", "objective.direction=maximize"])
    objective.log_best(tracker, parent, cfg)
    run = mlflow_store.client.get_run(parent)
    assert run.data.metrics["best_objective"] == 30.0  # the failed trial's 99 does not count
    assert run.data.tags["rnnsweep.objective.best_run"] == ids["b"]
    assert run.data.tags["rnnsweep.objective.best_trial"] == "b"
    assert "best throughput_seq_per_s (maximize): 30 in trial b" in capsys.readouterr().out
    # A trial skipped on resume hands the sweeper the value its earlier run recorded.
    assert objective.value_of_run(tracker, ids["a"], cfg) == 10.0
    assert objective.value_of_run(tracker, ids["d"], cfg) == -math.inf
    # Named by its metric alone, the objective is minimized, as a config without a direction.
    assert objective.value_of_run(tracker, ids["d"], "throughput_seq_per_s") == math.inf
    minimize = compose_cfg(["objective.metric=throughput_seq_per_s"])
    objective.log_best(tracker, parent, minimize)
    assert mlflow_store.client.get_run(parent).data.tags["rnnsweep.objective.best_trial"] == "a"

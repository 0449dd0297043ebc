"""``python -m rnnsweep`` end to end, in a subprocess, against a real SQLite MLflow store."""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import BASIC_LAUNCHER, TOY, cli_paths, compose_cfg, run_cli, toy
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

import rnnsweep.config
import rnnsweep.config.sweeps
from rnnsweep.preflight.validation import ConfigError, check_overrides
from rnnsweep.record import TrialRecord
from rnnsweep.tracking import Tracker

SUMMARY_KEYS = ("latency_ms", "latency_ms_per_seq", "throughput_seq_per_s",
                "throughput_tok_per_s", "step_time_ms", "nonfinite_steps", "peak_mem_mb",
                "gflops", "final_loss")
STEP_SERIES = ("loss", "grad_norm", "grad_norm_clipped")
STEPS = 3  # TOY's steps
SECRET_ENV, SECRET = "RNNSWEEP_TEST_SECRET", "s3cr3t-0b5e2d91-do-not-record"


def assert_trial_run(client, run, batch: int | None = None) -> None:
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert run.data.tags["rnnsweep.outcome"] == "OK", run.data.tags.get("rnnsweep.reason")
    missing = [k for k in SUMMARY_KEYS if k not in m]
    assert not missing, f"missing summary metrics {missing}"
    assert all(math.isfinite(m[k]) for k in SUMMARY_KEYS)
    assert m["nonfinite_steps"] == 0
    b = int(run.data.params["batch"])
    if batch is not None:
        assert b == batch
    assert m["latency_ms_per_seq"] == pytest.approx(m["latency_ms"] / b, rel=1e-6)
    assert m["throughput_seq_per_s"] == pytest.approx(b / (m["latency_ms"] / 1e3), rel=1e-6)
    assert run.data.params["model.hidden_size"] == "16"
    for name in STEP_SERIES:
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(h.step for h in history) == list(range(STEPS)), name
        assert all(math.isfinite(h.value) for h in history), name
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_single_trial(mlflow_store, tmp_path):
    result = run_cli([*TOY, *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path,
                     extra_env={SECRET_ENV: SECRET})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "[OK]" in result.stdout
    runs = mlflow_store.runs()
    assert len(runs) == 1
    run = runs[0]
    assert MLFLOW_PARENT_RUN_ID not in run.data.tags  # a plain run is not part of a sweep
    assert_trial_run(mlflow_store.client, run, batch=32)
    assert run.data.tags["rnnsweep.device"]
    assert not (tmp_path / "outputs").exists()  # hydra.run.dir was honoured
    # No environment variable's value reaches the record.
    recorded = [*run.data.params.items(), *run.data.tags.items()]
    assert not [kv for kv in recorded if SECRET in kv[0] or SECRET in kv[1]]


@pytest.mark.slow
def test_batch_sweep(mlflow_store, tmp_path):
    batches = [1, 8, 32, 128]
    args = ["-m", f"batch={','.join(map(str, batches))}", BASIC_LAUNCHER, *TOY,
            *cli_paths(mlflow_store, tmp_path)]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    runs = mlflow_store.runs()
    parents = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]
    assert len(children) == len(batches) == len(runs) - 1
    assert sorted(int(r.data.params["batch"]) for r in children) == batches
    for run in children:
        assert_trial_run(mlflow_store.client, run)

    assert parent.data.tags.get("rnnsweep.role") == "sweep"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials"] == len(batches)
    assert parent.data.metrics["trials_finished"] == len(batches)
    assert parent.data.metrics["trials_failed"] == 0


# --- experiment 1 is what the defaults and the ready sweep run ---------------------------


def assert_experiment_1(cfg) -> None:
    """Experiment 1 (docs/experiments.md): LSTM 128 -> 256, seq_len 100, forward latency."""
    assert str(cfg.model.cell) == "lstm"
    assert (cfg.model.input_size, cfg.model.hidden_size, cfg.model.num_layers) == (128, 256, 1)
    assert str(cfg.model.impl) == "fused"
    assert cfg.seq_len == 100
    assert cfg.precision.autocast_dtype is None
    assert cfg.workload.bench


def test_defaults_are_experiment_1():
    assert_experiment_1(compose_cfg())


def test_batch_scaling_sweep_is_experiment_1():
    rnnsweep.config.register()
    rnnsweep.config.sweeps.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(rnnsweep.config.conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[BASIC_LAUNCHER, "+sweep=batch_scaling"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert str(cfg.hydra.sweeper.params.batch).replace(" ", "") == "1,8,32,128"
    assert_experiment_1(cfg)


# --- bad input -----------------------------------------------------------------------------

HAS_CUDA = torch.cuda.is_available()

# (command-line arguments, words the single error line must contain: the key and what is
# allowed). Every case must be refused before any trial starts.
BAD_INPUTS = {
    "batch=0": (["batch=0"], ["batch", ">= 1"]),
    "batch=-3": (["batch=-3"], ["batch", ">= 1"]),
    "batch=abc": (["batch=abc"], ["batch", "integer"]),
    "seq_len=0": (["seq_len=0"], ["seq_len", ">= 1"]),
    "steps=-1": (["steps=-1"], ["steps", "[0, 100000]"]),
    "precision=fp8": (["precision=fp8"], ["precision", "fp32", "bf16", "fp16"]),
    "model=transformer": (["model=transformer"], ["model", "lstm", "gru", "rnn"]),
    "model.hidden_size=0": (["model.hidden_size=0"], ["model.hidden_size", ">= 1"]),
    "clipping.max_norm=-1": (["clipping.max_norm=-1"], ["clipping.max_norm", "> 0"]),
    "hardware=gpu": (["hardware=gpu"], ["hardware", "cpu"]),
    "foo=1": (["foo=1"], ["foo", "batch", "model"]),
    "-m batch=1,0": (["-m", "batch=1,0", BASIC_LAUNCHER], ["batch", ">= 1"]),
}
RUNNABLE_BAD = [k for k in BAD_INPUTS if not (k == "hardware=gpu" and HAS_CUDA)]


def snapshot(store) -> dict:
    """Everything a bad command could have changed in the store."""
    client = store.client
    runs = {}
    for run in store.all_runs():
        rid = run.info.run_id
        runs[rid] = (run.info.status, run.info.end_time, run.data.params, run.data.tags,
                     run.data.metrics,
                     [(m.step, m.value) for m in client.get_metric_history(rid, "loss")],
                     sorted(a.path for a in client.list_artifacts(rid)))
    experiments = sorted((e.experiment_id, e.name, e.lifecycle_stage)
                         for e in client.search_experiments())
    return {"runs": runs, "experiments": experiments}


@pytest.fixture(scope="module")
def bad_input_results(module_store, tmp_path_factory):
    """A store holding one finished run; then every bad command, a few at a time."""
    record = TrialRecord(params={"batch": "32", "model.hidden_size": "16"},
                         tags={"rnnsweep.outcome": "OK"}, metrics={"latency_ms": 1.5},
                         step_metrics={"loss": [1.0, 0.5, 0.25]},
                         artifacts={"config.yaml": b"batch: 32\n"})
    module_store.experiment("rnnsweep")
    tracker = Tracker(module_store.uri, "rnnsweep")
    tracker.write_record(tracker.start_run("pre-existing"), record)
    before = snapshot(module_store)
    digest = hashlib.sha256(module_store.path.read_bytes()).hexdigest()
    assert len(before["runs"]) == 1

    def call(case: str):
        tmp = tmp_path_factory.mktemp("bad")
        args, _ = BAD_INPUTS[case]
        # Toy sizes keep a wrongly accepted command short; the bad value must not be
        # overridden by them.
        return tmp, run_cli([*toy(*args), *cli_paths(module_store, tmp)], cwd=tmp, timeout=180)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = dict(zip(RUNNABLE_BAD, pool.map(call, RUNNABLE_BAD), strict=True))
    return {"results": results, "before": before, "digest": digest, "store": module_store}


BAD_CASES = [pytest.param(k, marks=pytest.mark.skipif(k == "hardware=gpu" and HAS_CUDA,
                                                     reason="this machine has CUDA"))
             for k in BAD_INPUTS]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_refused_by_validation(case):
    """The fast tier's half of the table: the same checks the CLI runs, in-process."""
    args, words = BAD_INPUTS[case]
    multirun = "-m" in args
    with pytest.raises(ConfigError) as refused:
        check_overrides(toy(*(a for a in args if a != "-m")), multirun)
    line = str(refused.value)
    assert len(line.splitlines()) == 1
    missing = [w for w in words if w.lower() not in line.lower()]
    assert not missing, f"{line!r} lacks {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_error(case, bad_input_results):
    tmp, result = bad_input_results["results"][case]
    _, words = BAD_INPUTS[case]
    assert result.returncode == 2  # as the README promises
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    missing = [w for w in words if w.lower() not in line.lower()]
    assert not missing, f"{line!r} lacks {missing}"
    # Refused before any trial started: no Hydra job or sweep directory was made.
    assert not (tmp / "out").exists() and not (tmp / "multirun").exists()
    assert not (tmp / "outputs").exists()


@pytest.mark.slow
def test_bad_input_leaves_store_unchanged(bad_input_results):
    store = bad_input_results["store"]
    assert hashlib.sha256(store.path.read_bytes()).hexdigest() == bad_input_results["digest"]
    after = snapshot(store)
    assert after == bad_input_results["before"]
    (status, _, params, _, metrics, loss, artifacts), = after["runs"].values()
    assert status == "FINISHED" and params["batch"] == "32"
    assert metrics["latency_ms"] == 1.5
    assert loss == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert artifacts == ["config.yaml"]

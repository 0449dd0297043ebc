"""One trial in-process (``run_trial``), and its record written to a real MLflow store."""

from __future__ import annotations

import math
import pickle
import pickletools
import re
import statistics

import pytest
import torch
import yaml
from conftest import TOY, compose_cfg
from mlflow.artifacts import download_artifacts
from omegaconf import OmegaConf

from rnnsweep.record import FAILED, OK, UNSUPPORTED, config_hash, flatten
from rnnsweep.tracking import Tracker
from rnnsweep.trial.config_file import config_yaml
from rnnsweep.trial.models import forward_flops_per_sequence
from rnnsweep.trial.run import run_trial

SECRET_ENV = "RNNSWEEP_TEST_SECRET"
SECRET = "s3cr3t-7f1c9a4e-do-not-record"

TRAIN_KEYS = ("final_loss", "max_grad_norm", "max_grad_norm_clipped", "step_time_ms",
              "train_seq_per_s", "train_gflops", "nonfinite_steps", "nan_forward_steps",
              "nan_loss_steps", "nan_backward_steps", "exploding_steps", "vanishing_steps")
BENCH_KEYS = ("latency_ms", "latency_iqr_ms", "latency_ms_per_seq", "throughput_seq_per_s",
              "throughput_tok_per_s", "gflops", "matmul_gflops", "flop_utilization")
SERIES = ("loss", "grad_norm", "grad_norm_clipped", "saturation", "lr", "step_ms", "seq_per_s")

# docs/experiments.md, experiment 4: the exploding-gradient demonstration.
EXPLODING = ["model=rnn", "model.recurrent_init_scale=3", "task=adding", "task.optimizer=sgd",
             "task.lr=0.01", "model.input_size=64", "model.hidden_size=128", "batch=16",
             "seq_len=50", "steps=3", "workload=train", "hardware=cpu"]

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def trial(*overrides: str):
    return run_trial(compose_cfg([*TOY, *overrides]))


@pytest.fixture(scope="module")
def default_trial():
    """The default trial at toy sizes, run with a sentinel in the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRET_ENV, SECRET)
        cfg = compose_cfg(TOY)
        return cfg, run_trial(cfg)


# --- the default trial -------------------------------------------------------------------


def test_default_trial_ok_with_all_keys(default_trial):
    cfg, record = default_trial
    assert record.outcome == OK, record.reason
    assert record.reason == ""
    assert record.status == "FINISHED"
    missing = [k for k in (*TRAIN_KEYS, *BENCH_KEYS, "peak_mem_mb") if k not in record.metrics]
    assert not missing
    assert all(math.isfinite(v) for v in record.metrics.values()), record.metrics
    for key in ("latency_ms", "latency_ms_per_seq", "throughput_seq_per_s",
                "throughput_tok_per_s", "gflops", "matmul_gflops", "step_time_ms",
                "train_seq_per_s", "peak_mem_mb", "final_loss", "max_grad_norm"):
        assert record.metrics[key] > 0, key
    for key in ("nonfinite_steps", "nan_forward_steps", "nan_loss_steps",
                "nan_backward_steps", "exploding_steps"):
        assert record.metrics[key] == 0, key
    assert record.tags["rnnsweep.outcome"] == OK
    assert record.tags["rnnsweep.output_dtype"] == "float32"
    assert record.tags["rnnsweep.device"] == ("cpu" if not torch.cuda.is_available()
                                              else torch.cuda.get_device_name())
    assert re.fullmatch(r"[0-9a-f]{16}", record.tags["rnnsweep.config_hash"])


def test_default_trial_record_unpickles_without_torch(default_trial):
    """The record crosses from a Ray worker to the driver, which never imports torch: no
    value in it may be a torch type (``torch.__version__`` is a ``TorchVersion``)."""
    globals_ = [arg for op, arg, _ in pickletools.genops(pickle.dumps(default_trial))
                if op.name in ("GLOBAL", "STACK_GLOBAL", "SHORT_BINUNICODE", "BINUNICODE")
                and isinstance(arg, str)]
    assert not [g for g in globals_ if g.startswith("torch") or g == "TorchVersion"]


def test_default_trial_metrics_are_consistent(default_trial):
    cfg, record = default_trial
    m = record.metrics
    latency_s = m["latency_ms"] / 1e3
    assert m["latency_ms_per_seq"] == pytest.approx(m["latency_ms"] / cfg.batch, rel=1e-9)
    assert m["throughput_seq_per_s"] == pytest.approx(cfg.batch / latency_s, rel=1e-6)
    assert m["throughput_tok_per_s"] == pytest.approx(m["throughput_seq_per_s"] * cfg.seq_len,
                                                      rel=1e-6)
    # The recurrent layer (formula: the fused CPU kernel hides it from the counter) plus the
    # linear head, counted.
    flops = forward_flops_per_sequence("lstm", 8, 16, 1, 10) + 2 * 16 * 1 * 10
    assert m["forward_flops_per_seq"] == flops
    assert m["gflops"] == pytest.approx(flops * cfg.batch / latency_s / 1e9, rel=1e-6)
    assert m["flop_utilization"] == pytest.approx(m["gflops"] / m["matmul_gflops"], rel=1e-9)
    assert 0 < m["flop_utilization"] < 1  # nothing beats the machine's own dense matmul
    assert m["train_seq_per_s"] == pytest.approx(cfg.batch / (m["step_time_ms"] / 1e3),
                                                 rel=1e-6)
    assert m["train_gflops"] == pytest.approx(3 * flops * cfg.batch / (m["step_time_ms"] / 1e3)
                                              / 1e9, rel=1e-6)


def test_default_trial_step_series(default_trial):
    cfg, record = default_trial
    # No grad_scale without a scaler; the timing blocks are a series of their own, and so
    # are the steady training steps (all but the first) that step_time_ms is the median of.
    assert set(record.step_metrics) == {*SERIES, "timing/latency_ms", "timing/step_time_ms"}
    steps_ms = record.step_metrics["timing/step_time_ms"]
    assert len(steps_ms) == cfg.steps - 1
    assert record.metrics["step_time_ms"] == pytest.approx(statistics.median(steps_ms))
    for name in SERIES:
        assert len(record.step_metrics[name]) == cfg.steps, name
        assert all(math.isfinite(v) for v in record.step_metrics[name]), name
    losses = record.step_metrics["loss"]
    assert losses[-1] < losses[0]  # Adam fits the fixed regression batch
    assert record.metrics["final_loss"] == losses[-1]
    assert record.metrics["max_grad_norm"] == max(record.step_metrics["grad_norm"])
    # No clipping: the "clipped" norm is the measured norm.
    assert record.step_metrics["grad_norm_clipped"] == record.step_metrics["grad_norm"]
    assert all(0 <= v <= 1 for v in record.step_metrics["saturation"])


def test_default_trial_params_and_config_artifact(default_trial):
    cfg, record = default_trial
    p = record.params
    assert p["model.hidden_size"] == "16"
    assert p["model.input_size"] == "8"
    assert p["model.cell"] == "lstm"  # enums as plain names
    assert p["model.impl"] == "fused"
    assert p["batch"] == "32" and p["seq_len"] == "10" and p["steps"] == "3"
    assert p["precision.autocast_dtype"] == "None"
    assert p["clipping.max_norm"] == "None"
    assert not any(k.startswith("hydra") for k in p)
    saved = yaml.safe_load(record.artifacts["config.yaml"])
    assert saved["model"]["hidden_size"] == 16
    assert flatten(saved) == p


def test_config_artifact_is_what_omegaconf_writes(default_trial):
    """Written by libyaml, not by OmegaConf (a third of a small trial's CPU): the same
    text, strings that would read back as booleans or numbers quoted as OmegaConf quotes
    them, so that OmegaConf reads every value back with its type."""
    cfg, record = default_trial
    container = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), enum_to_str=True)
    assert record.artifacts["config.yaml"].decode() == OmegaConf.to_yaml(container)
    awkward = {"a": "1", "b": "yes", "c": "1e-3", "d": "null", "e": "x: y", "f": "2026-12-06",
               "g": "inf", "h": "nan", "i": 1.5, "j": None, "k": [1, "2", [True, "off"]],
               "l": "", "m": "ünï", "n": "0x1F", "o": "1_000", "p": "~", "q": {"r": "-.5"}}
    assert config_yaml(awkward) == OmegaConf.to_yaml(awkward)
    assert OmegaConf.create(config_yaml(awkward)) == OmegaConf.create(awkward)


def test_config_hash_ignores_where_results_go():
    a = flatten({"batch": 1, "tracking": {"uri": "sqlite:///a.db"}, "ray": {"address": "x"}})
    b = flatten({"batch": 1, "tracking": {"uri": "sqlite:///b.db"}, "ray": {"address": None}})
    c = flatten({"batch": 2, "tracking": {"uri": "sqlite:///a.db"}, "ray": {"address": "x"}})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)


# --- guards ------------------------------------------------------------------------------


def test_injected_nan_steps_are_skipped_and_counted():
    record = trial("guard.inject_nan_steps=[1,2]", "steps=5", "workload=train")
    assert record.outcome == OK, record.reason
    m = record.metrics
    assert m["nonfinite_steps"] == 2
    assert m["nan_forward_steps"] == 2
    assert m["nan_loss_steps"] == 0 and m["nan_backward_steps"] == 0
    losses = record.step_metrics["loss"]
    assert len(losses) == 5
    assert math.isnan(losses[1]) and math.isnan(losses[2])
    # The skipped steps left the weights intact, and the other steps kept training.
    trained = [losses[0], losses[3], losses[4]]
    assert all(math.isfinite(v) for v in trained)
    assert trained[0] > trained[1] > trained[2]
    assert math.isfinite(m["final_loss"])
    assert math.isfinite(m["max_grad_norm"])


def test_max_grad_norm_ignores_a_skipped_first_step():
    """The summary max must not depend on where a skipped (NaN) step falls."""
    record = trial("guard.inject_nan_steps=[0]", "workload=train")
    assert record.metrics["nonfinite_steps"] == 1
    norms = record.step_metrics["grad_norm"]
    finite = [v for v in norms if math.isfinite(v)]
    assert len(finite) == 2
    assert record.metrics["max_grad_norm"] == max(finite)
    assert record.metrics["max_grad_norm_clipped"] == max(finite)


def test_exploding_init_without_clipping():
    record = run_trial(compose_cfg(EXPLODING))
    assert record.outcome == OK, record.reason
    norms = record.step_metrics["grad_norm"]
    assert norms[0] > 100  # measured ~300 here; max_norm defaults are 1 to 5
    assert record.metrics["max_grad_norm"] > 100
    assert record.metrics["exploding_steps"] >= 1
    # Nothing clipped: the post-clip series is the pre-clip series.
    assert record.step_metrics["grad_norm_clipped"] == norms
    assert record.metrics["max_grad_norm_clipped"] == record.metrics["max_grad_norm"]


@pytest.mark.parametrize("max_norm", [1.0, 5.0])
def test_exploding_init_with_norm_clipping(max_norm):
    record = run_trial(compose_cfg([*EXPLODING, "clipping=norm",
                                    f"clipping.max_norm={max_norm}"]))
    assert record.outcome == OK, record.reason
    assert record.params["clipping.max_norm"] == str(max_norm)
    pre, post = record.step_metrics["grad_norm"], record.step_metrics["grad_norm_clipped"]
    assert pre[0] > 100  # the norm is measured before clipping...
    assert record.metrics["max_grad_norm"] > 100
    assert all(v <= max_norm + 1e-4 for v in post)  # ...and bounded after it
    assert record.metrics["max_grad_norm_clipped"] <= max_norm + 1e-4
    assert post[0] == pytest.approx(max_norm, rel=1e-4)


def test_clipping_does_not_change_the_first_measured_norm():
    unclipped = run_trial(compose_cfg(EXPLODING))
    clipped = run_trial(compose_cfg([*EXPLODING, "clipping=norm"]))
    assert clipped.step_metrics["grad_norm"][0] == pytest.approx(
        unclipped.step_metrics["grad_norm"][0], rel=1e-5)


# --- precision ---------------------------------------------------------------------------


def test_bf16_rnn_on_cpu_trains_in_bf16():
    record = trial("model=rnn", "precision=bf16", "hardware=cpu", "workload=train")
    assert record.outcome == OK, record.reason
    assert record.tags["rnnsweep.output_dtype"] == "bfloat16"
    assert all(math.isfinite(v) for v in record.step_metrics["loss"])
    assert math.isfinite(record.metrics["final_loss"])
    assert "grad_scale" not in record.step_metrics  # bf16 needs no scaler


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bf16_lstm_gru_on_cpu_are_bf16_or_unsupported(cell):
    """oneDNN without AVX512-BF16 rejects a bf16 LSTM and autocast leaves GRU in fp32;
    either way the record must not be an OK run labelled bf16 that computed in fp32."""
    record = trial(f"model={cell}", "precision=bf16", "hardware=cpu")
    if record.outcome == OK:
        assert record.tags["rnnsweep.output_dtype"] == "bfloat16"
        assert math.isfinite(record.metrics["final_loss"])
    else:
        assert record.outcome == UNSUPPORTED
        assert record.status == "FINISHED"
        assert cell in record.reason and "bf16" in record.reason
        assert record.tags["rnnsweep.reason"] == record.reason
        assert "rnnsweep.output_dtype" not in record.tags
        assert not record.step_metrics and "latency_ms" not in record.metrics


def test_fp16_on_cpu_is_unsupported():
    record = trial("precision=fp16", "hardware=cpu")
    assert record.outcome == UNSUPPORTED
    assert record.status == "FINISHED"  # a recorded answer, not a failure
    assert "fp16" in record.reason and "CUDA" in record.reason
    assert record.tags["rnnsweep.outcome"] == UNSUPPORTED
    assert not record.step_metrics and "latency_ms" not in record.metrics


@pytest.mark.gpu
def test_fp16_on_cuda_trains_with_a_scaler():
    record = trial("precision=fp16", "hardware=gpu")
    assert record.outcome == OK, record.reason
    assert record.tags["rnnsweep.output_dtype"] == "float16"
    assert len(record.step_metrics["grad_scale"]) == 3
    assert record.metrics["final_grad_scale"] > 0


# --- failures ----------------------------------------------------------------------------


def assert_failed(record, *words: str) -> None:
    assert record.outcome == FAILED
    assert record.status == "FAILED"
    assert record.reason and all(w in record.reason for w in words), record.reason
    assert record.tags["rnnsweep.outcome"] == FAILED
    assert record.tags["rnnsweep.reason"] == record.reason
    error = record.artifacts["error.txt"].decode()
    assert error.startswith("Traceback") and words[-1] in error
    assert "config.yaml" in record.artifacts


@no_cuda
def test_trial_on_missing_cuda_fails_with_error_artifact():
    # The CLI refuses hardware=gpu here; run_trial is what a remote worker would call.
    record = trial("hardware.device=cuda")
    assert_failed(record, "RuntimeError", "cuda")


def test_trial_raising_mid_training_fails_with_error_artifact():
    record = trial("guard.raise_at_step=1")
    assert_failed(record, "RuntimeError", "raise_at_step")


# --- fused vs loop -----------------------------------------------------------------------


@pytest.mark.parametrize("workload", ["bench", "train_bench"])
def test_compare_impl(workload):
    """Both implementations must be timed with the same weights - also after training."""
    record = trial(f"workload={workload}", "workload.compare_impl=true")
    assert record.outcome == OK, record.reason
    m = record.metrics
    for key in ("latency_ms_fused", "latency_ms_loop", "fused_speedup", "impl_max_abs_diff"):
        assert key in m and math.isfinite(m[key]), key
    assert m["latency_ms_fused"] == m["latency_ms"]  # the trial's own model is fused
    assert m["latency_ms_loop"] > 0
    assert m["fused_speedup"] == pytest.approx(m["latency_ms_loop"] / m["latency_ms_fused"])
    assert m["impl_max_abs_diff"] < 1e-4


def test_compare_impl_from_the_loop_side():
    record = trial("model.impl=loop", "workload=bench", "workload.compare_impl=true")
    assert record.outcome == OK, record.reason
    m = record.metrics
    assert m["latency_ms_loop"] == m["latency_ms"]
    assert m["fused_speedup"] == pytest.approx(m["latency_ms_loop"] / m["latency_ms_fused"])
    assert m["impl_max_abs_diff"] < 1e-4


# --- the MLflow record -------------------------------------------------------------------


def write(store, record) -> str:
    store.experiment("rnnsweep-test")
    tracker = Tracker(store.uri, "rnnsweep-test")
    run_id = tracker.start_run("trial")
    tracker.write_record(run_id, record)
    return run_id


def test_record_written_to_mlflow(default_trial, mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    cfg, record = default_trial
    run_id = write(mlflow_store, record)
    client = mlflow_store.client
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "trial"

    params = run.data.params
    assert params == record.params  # the whole resolved config, flattened
    assert params["model.hidden_size"] == "16"
    assert params["task.optimizer"] == "adam"

    tags = run.data.tags
    for key in ("rnnsweep.device", "rnnsweep.torch_version", "rnnsweep.cpu_model",
                "rnnsweep.host", "rnnsweep.outcome", "rnnsweep.config_hash"):
        assert tags.get(key), key
    assert tags["rnnsweep.torch_version"] == torch.__version__
    assert tags["rnnsweep.outcome"] == OK

    for key, value in record.metrics.items():
        assert run.data.metrics[key] == pytest.approx(value), key
    for name, values in record.step_metrics.items():
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(len(values))), name
        assert [m.value for m in history] == pytest.approx(values), name

    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    local = download_artifacts(run_id=run_id, artifact_path="config.yaml",
                               dst_path=str(tmp_path), tracking_uri=mlflow_store.uri)
    with open(local, "rb") as fh:
        assert fh.read() == record.artifacts["config.yaml"]

    # Hardware and library facts only: no environment variable value is recorded.
    recorded = [*params.items(), *tags.items()]
    assert not [kv for kv in recorded if SECRET in kv[0] or SECRET in kv[1]]
    assert SECRET.encode() not in record.artifacts["config.yaml"]


def test_nan_steps_recorded_in_mlflow(mlflow_store):
    record = trial("guard.inject_nan_steps=[1]", "workload=train")
    run_id = write(mlflow_store, record)
    history = sorted(mlflow_store.client.get_metric_history(run_id, "loss"),
                     key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2]
    assert math.isnan(history[1].value)
    assert math.isfinite(history[0].value) and math.isfinite(history[2].value)
    assert mlflow_store.client.get_run(run_id).data.metrics["nonfinite_steps"] == 1


@no_cuda
def test_failed_record_in_mlflow(mlflow_store):
    record = trial("hardware.device=cuda")
    run_id = write(mlflow_store, record)
    run = mlflow_store.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["rnnsweep.outcome"] == FAILED
    assert "cuda" in run.data.tags["rnnsweep.reason"]
    paths = {a.path for a in mlflow_store.client.list_artifacts(run_id)}
    assert paths == {"config.yaml", "error.txt"}

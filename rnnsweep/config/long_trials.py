"""Checks of the long-trial settings (live metrics, evaluation, checkpoints, time limits,
stoppers), made before anything starts: one line naming the key and what it allows."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnnsweep.config import bounds, objective
from rnnsweep.config.errors import ConfigError
from rnnsweep.config.schema import BUILTIN_TASKS

SCHEDULES = ("constant", "cosine", "step")
CHECKPOINT_STORES = ("dir", "artifacts")
STOPPERS = ("none", "asha", "median")
# What a training trial of a built-in task records, and what it reports while it runs.
TRAIN_METRICS = frozenset({
    "final_loss", "steps_done", "val_loss", "best_val_loss", "best_val_step",
    "max_grad_norm", "max_grad_norm_clipped", "step_time_ms", "step_time_other_cpus",
    "train_seq_per_s", "train_gflops", "final_grad_scale", "nonfinite_steps",
    "nan_forward_steps", "nan_loss_steps", "nan_backward_steps", "exploding_steps",
    "vanishing_steps", "resumed_from_step", "checkpoint_saves", "checkpoint_save_ms",
    "forward_flops_per_seq", "peak_mem_mb", "peak_rss_mb"})
TEXT_METRICS = frozenset({"bits_per_char", "val_bits_per_char", "best_val_bits_per_char"})
LIVE_METRICS = frozenset({"loss", "final_loss", "val_loss", "best_val_loss", "grad_norm",
                          "grad_norm_clipped"})
LIVE_TEXT_METRICS = frozenset({"bits_per_char", "val_bits_per_char"})
BENCH_METRICS = frozenset({
    "latency_ms", "latency_ms_per_seq", "throughput_seq_per_s", "throughput_tok_per_s",
    "gflops", "matmul_gflops", "flop_utilization", "latency_iqr_ms", "latency_blocks",
    "latency_other_cpus", "forward_flops_per_seq", "peak_mem_mb", "peak_rss_mb"})


def check_trial(cfg: DictConfig) -> None:
    """One trial's long-trial keys."""
    _positive(cfg, "tracking.live_interval_s")
    _count(cfg, "tracking.live_queue", required=True)
    _positive(cfg, "trial_timeout_s", optional=True)
    _positive(cfg, "sweep_timeout_s", optional=True)
    _count(cfg, "guard.stop_after_nonfinite")
    _positive(cfg, "checkpoint.every_s", optional=True)
    _count(cfg, "checkpoint.every_steps")
    _count(cfg, "eval_every")
    steps = OmegaConf.select(cfg, "steps") or 0
    every = OmegaConf.select(cfg, "eval_every")
    if every is not None and OmegaConf.select(cfg, "workload.train") and every > steps:
        raise ConfigError(f"eval_every={every}: beyond steps={steps}; must be an integer in "
                          f"[1, {steps}] (or null: a tenth of steps)")
    schedule = OmegaConf.select(cfg, "task.schedule")
    if schedule is not None and str(schedule) not in SCHEDULES:
        raise ConfigError(f"task.schedule={schedule}: must be one of {', '.join(SCHEDULES)}")
    if OmegaConf.select(cfg, "task.lr_gamma") is not None:
        _positive(cfg, "task.lr_gamma")
    _count(cfg, "task.lr_step_every")
    store = OmegaConf.select(cfg, "checkpoint.store", default="dir")
    if store not in CHECKPOINT_STORES:
        raise ConfigError(f"checkpoint.store={store}: must be one of "
                          f"{', '.join(CHECKPOINT_STORES)}")
    if store == "dir" and (OmegaConf.select(cfg, "checkpoint.every_s")
                           or OmegaConf.select(cfg, "checkpoint.every_steps")):
        _writable(str(OmegaConf.select(cfg, "checkpoint.dir")))


def check_sweep(base: DictConfig) -> None:
    """The sweep's stopper (``hydra.launcher.*``) and its objective, from its base config."""
    stopper = OmegaConf.select(base, "hydra.launcher.stopper", default="none")
    if stopper is None or str(stopper) not in STOPPERS:
        raise ConfigError(f"hydra.launcher.stopper={stopper}: must be one of "
                          f"{', '.join(STOPPERS)}")
    factor = OmegaConf.select(base, "hydra.launcher.reduction_factor", default=3)
    if not isinstance(factor, int) or factor < 2:
        raise ConfigError(f"hydra.launcher.reduction_factor={factor}: must be an integer >= 2")
    trials = OmegaConf.select(base, "hydra.launcher.min_trials", default=3)
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"hydra.launcher.min_trials={trials}: must be an integer >= 1")
    steps = OmegaConf.select(base, "steps") or 0
    grace = OmegaConf.select(base, "hydra.launcher.grace_period")
    if grace is not None and (not isinstance(grace, int) or not 1 <= grace <= steps):
        raise ConfigError(f"hydra.launcher.grace_period={grace}: must be an integer in "
                          f"[1, steps={steps}] (or null: a tenth of steps)")
    metric = objective_metric(base)
    produced = produced_metrics(base)
    if produced is not None and metric not in produced:
        raise ConfigError(f"objective.metric={metric}: this workload never records it; "
                          f"allowed here: {', '.join(sorted(produced))}")
    if str(stopper) != "none":
        if not OmegaConf.select(base, "workload.train", default=False):
            raise ConfigError(f"hydra.launcher.stopper={stopper}: stoppers judge training "
                              "trials as they train; this workload does not train "
                              "(workload=train or train_bench)")
        live = LIVE_METRICS | (LIVE_TEXT_METRICS if _text_task(base) else frozenset())
        if metric not in live:
            raise ConfigError(f"hydra.launcher.stopper={stopper}: objective.metric={metric} "
                              f"is not reported while a trial trains; allowed: "
                              f"{', '.join(sorted(live))}")


def objective_metric(cfg: DictConfig) -> str:
    return objective.settings(cfg)[0]


def produced_metrics(cfg: DictConfig) -> frozenset[str] | None:
    """What a trial of this config records, where that is known before it runs (a
    built-in task, no deployment); None where it is not (a user's task adds its own)."""
    task = OmegaConf.select(cfg, "task._target_")
    if task not in BUILTIN_TASKS or OmegaConf.select(cfg, "workload.deploy", default=False):
        return None
    if OmegaConf.select(cfg, "workload.compare_impl", default=False):
        return None  # names built from the implementations compared
    names: frozenset[str] = frozenset()
    if OmegaConf.select(cfg, "workload.train", default=False):
        names |= TRAIN_METRICS | (TEXT_METRICS if _text_task(cfg) else frozenset())
    if OmegaConf.select(cfg, "workload.bench", default=False):
        names |= BENCH_METRICS
    return names or None


def _text_task(cfg: DictConfig) -> bool:
    return OmegaConf.select(cfg, "task._target_") == "rnnsweep.trial.data.CharText"


def _positive(cfg: DictConfig, key: str, optional: bool = False) -> None:
    """bounds' finite-number check, where null may mean "off"."""
    if optional and OmegaConf.select(cfg, key) is None:
        return
    allowed = "null or a finite number > 0" if optional else "a finite number > 0"
    bounds.finite(cfg, key, lambda v: v > 0, allowed)


def _count(cfg: DictConfig, key: str, required: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and not required:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "an integer >= 1" if required else "null or an integer >= 1"
        raise ConfigError(f"{key}={value}: must be {allowed}")


def _writable(directory: str) -> None:
    """The checkpoint directory can be made and written here (the driver's side; on a
    cluster each node checks its own when it first saves)."""
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".rnnsweep-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"checkpoint.dir={directory}: cannot write there "
                          f"({exc.strerror or type(exc).__name__}); must be a writable "
                          "directory") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"checkpoint.dir={directory}: not writable; must be a writable "
                          "directory")

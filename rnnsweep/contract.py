"""The names rnnsweep writes into MLflow and reads back: one home for the contract.

A trial, the launcher, the report, resume and compare all meet on these names, as
MLflow's own code meets on ``mlflow/utils/mlflow_tags.py``. A record written by one
version is read by the next, so a name here is never renamed, only added. This module
imports nothing: the trial side, the sweep side and the report all import it freely.

Tag values are strings. Booleans and numbers go in through :func:`to_tag` and come out
through :func:`from_tag`, the one pair that knows how they are spelled.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

# --- outcomes: what a trial's record says it came to ------------------------------------

OK, UNSUPPORTED, FAILED = "OK", "UNSUPPORTED", "FAILED"
# Every training step was non-finite: the trial ran, but its numbers describe nothing.
DIVERGED = "DIVERGED"
# Ended early: by a stopper or pruner (its metrics are kept, it is no failure), past
# ``trial_timeout_s``, or by the sweep (its time limit, a signal).
STOPPED, TIMED_OUT, KILLED = "STOPPED", "TIMED_OUT", "KILLED"
OUTCOMES = (OK, UNSUPPORTED, FAILED, DIVERGED, STOPPED, TIMED_OUT, KILLED)


class TrialState(StrEnum):
    """Where a trial of a running sweep stands, in the launcher and on the terminal."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    REUSED = "reused"  # measured by an earlier sweep; its run is this sweep's answer
    KILLED = "killed"  # never finished: the sweep was interrupted or ran out of time


# --- a trial's run -------------------------------------------------------------------

OUTCOME_TAG, REASON_TAG = "rnnsweep.outcome", "rnnsweep.reason"
# The hash of the trial's config (``record.config_hash``), which resume matches on.
CONFIG_HASH_TAG = "rnnsweep.config_hash"
# On a finished trial: what produced its numbers; resume reuses it only on the same.
FINGERPRINT_TAG = "rnnsweep.env_fingerprint"
# On every child run: the run id of its sweep's parent (pandas can group by it directly).
SWEEP_TAG = "rnnsweep.sweep"
RETRIES_TAG = "rnnsweep.retries"  # how many times Ray retried it
STOPPED_AT_STEP_TAG = "rnnsweep.stopped_at_step"
STOP_REASON_TAG = "rnnsweep.stop_reason"
RESUMED_FROM_STEP_TAG = "rnnsweep.resumed_from_step"
CHECKPOINT_DIR_TAG = "rnnsweep.checkpoint.dir"
# checkpoint.store=artifacts: a running trial's latest save, on its run.
CHECKPOINT_ARTIFACT = "checkpoint/checkpoint.pt"
# Live values the store did not take while the trial ran (the record fills them in).
LIVE_DROPPED_TAG = "rnnsweep.live.dropped"
# Timing's own verdict on its figures.
NOISY_TAG, NOISE_REASON_TAG = "rnnsweep.timing.noisy", "rnnsweep.timing.noise_reason"
TIMING_SCOPE_TAG = "rnnsweep.timing.scope"
# What the trial ran on (rnnsweep.trial.environment).
DEVICE_TAG, NUM_THREADS_TAG = "rnnsweep.device", "rnnsweep.num_threads"
TORCH_VERSION_TAG, CUDA_VERSION_TAG = "rnnsweep.torch_version", "rnnsweep.cuda_version"
CUDNN_TAG, ONEDNN_TAG = "rnnsweep.cudnn", "rnnsweep.onednn"
CPU_MODEL_TAG, HOST_TAG, PYTHON_TAG = "rnnsweep.cpu_model", "rnnsweep.host", "rnnsweep.python"
COMPUTE_DEVICE_TAG = "rnnsweep.compute_device"  # a test-only device override, said so
CUDA_MEMORY_FRACTION_TAG = "rnnsweep.cuda_memory_fraction"
FLOPS_SOURCE_TAG = "rnnsweep.flops_source"
PEAK_MEM_KIND_TAG = "rnnsweep.peak_mem_kind"
OUTPUT_DTYPE_TAG = "rnnsweep.output_dtype"
# Deployment checks: streaming parity and each export's status ("ok" or "failed").
STREAM_PARITY_TAG = "rnnsweep.stream.parity"
EXPORT_TAG_PREFIX = "rnnsweep.export."


def export_status_tag(fmt: str) -> str:
    """``ok`` or ``failed`` for one export format (``torchscript``, ``onnx``, ...)."""
    return f"{EXPORT_TAG_PREFIX}{fmt}.status"


# Where Ray placed it (the launcher's view).
RAY_TAG_PREFIX = "rnnsweep.ray."
RAY_REQUEST_TAG = "rnnsweep.ray.request"
RAY_RESOURCES_TAG = "rnnsweep.ray.resources"
RAY_EXCLUSIVE_TAG = "rnnsweep.ray.exclusive"
RAY_TRIALS_BESIDE_TAG = "rnnsweep.ray.trials_beside"
RAY_NODE_ID_TAG, RAY_NODE_IP_TAG = "rnnsweep.ray.node_id", "rnnsweep.ray.node_ip"
RAY_HOST_TAG = "rnnsweep.ray.host"
RAY_STARTED_AT_TAG, RAY_FINISHED_AT_TAG = "rnnsweep.ray.started_at", "rnnsweep.ray.finished_at"
RAY_GPU_IDS_TAG = "rnnsweep.ray.gpu_ids"
RAY_GPU_COTENANTS_TAG, RAY_GPU_SHARED_TAG = "rnnsweep.ray.gpu_cotenants", "rnnsweep.ray.gpu_shared"

# --- a sweep's parent run ---------------------------------------------------------------

ROLE_TAG = "rnnsweep.role"  # "sweep" on a parent run
SWEEP_ROLE = "sweep"
SWEEP_NAME_TAG = "rnnsweep.sweep_name"
OVERRIDES_TAG = "rnnsweep.overrides"
SWEEP_LIMIT_TAG = "rnnsweep.sweep_limit"  # why the sweep stopped early, if it did
# On a resumed sweep's parent, one per trial it reused: ``<prefix><run id>`` = its name.
REUSED_TAG_PREFIX = "rnnsweep.reused."
OBJECTIVE_TAG = "rnnsweep.objective"
OBJECTIVE_BEST_RUN_TAG = "rnnsweep.objective.best_run"
OBJECTIVE_BEST_TRIAL_TAG = "rnnsweep.objective.best_trial"
# The driver that holds the sweep: a sweep whose driver died is reaped (rnnsweep.lease).
LEASE_HOST_TAG = "rnnsweep.lease.host"
LEASE_PID_TAG = "rnnsweep.lease.pid"
LEASE_PID_START_TAG = "rnnsweep.lease.pid_start"  # tells a reused PID from the driver's own
LEASE_HEARTBEAT_TAG = "rnnsweep.lease.heartbeat"
# rnnsweep's Optuna sweeper: the study on the parent, each trial's number on its run.
OPTUNA_TRIAL_NUMBER_TAG = "rnnsweep.optuna.trial_number"
OPTUNA_STUDY_TAG = "rnnsweep.optuna.study"
OPTUNA_STORAGE_TAG, OPTUNA_SAMPLER_TAG = "rnnsweep.optuna.storage", "rnnsweep.optuna.sampler"
OPTUNA_PRUNER_TAG, OPTUNA_BEST_TRIAL_TAG = "rnnsweep.optuna.pruner", "rnnsweep.optuna.best_trial"
# One per trial told an earlier trial's outcome: ``<prefix><number>`` = the earlier number.
OPTUNA_DUPLICATE_TAG_PREFIX = "rnnsweep.optuna.duplicate."

# --- metrics -----------------------------------------------------------------------------

# Metrics that time something: a trial with any of them is a timed trial, and compare
# sets the timings of two trials side by side on these.
TIMED_METRICS = ("latency_ms", "latency_ms_fused", "latency_ms_loop", "step_time_ms",
                 "stream_latency_ms_p50")

# --- values ----------------------------------------------------------------------------

T = TypeVar("T", bool, int, float, str)


def to_tag(value: bool | int | float | str | None, decimals: int | None = None) -> str:
    """A value as a tag spells it: ``true``/``false``, plain digits (``decimals`` after the
    point, for a float), ``""`` for nothing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if decimals is not None and isinstance(value, int | float):
        return f"{value:.{decimals}f}"
    return str(value)


def from_tag(text: str | None, kind: Callable[[str], T], default: T) -> T:
    """A tag read back as ``kind`` (bool, int, float or str); ``default`` when it is
    missing or unreadable. Booleans read either spelling (``True`` from older records)."""
    if not text:
        return default
    if kind is bool:
        lowered = text.strip().lower()
        return (lowered == "true") if lowered in ("true", "false") else default
    try:
        return kind(text)
    except ValueError:
        return default

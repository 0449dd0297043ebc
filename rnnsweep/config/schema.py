"""Structured config schema: the dataclasses behind the YAML files in ``conf/``.

Every key a user can override is declared here with its type, so a typo or a wrong
type fails when Hydra composes the config, before any trial starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Cell(StrEnum):
    lstm = "lstm"
    gru = "gru"
    rnn = "rnn"


class Impl(StrEnum):
    fused = "fused"
    loop = "loop"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Optimizer(StrEnum):
    adam = "adam"
    sgd = "sgd"


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"  # to zero at the last step
    step = "step"  # times lr_gamma every lr_step_every steps


class Direction(StrEnum):
    minimize = "minimize"
    maximize = "maximize"


# The built-in model and task sources; anything else named by ``_target_`` is the user's.
BUILTIN_MODEL = "rnnsweep.trial.models.RecurrentNet"
BUILTIN_TASKS = ("rnnsweep.trial.data.Regression", "rnnsweep.trial.data.Adding",
                 "rnnsweep.trial.data.CharText")
# Task keys that configure training; the others are the batch source's constructor's.
TRAINING_KEYS = ("name", "optimizer", "lr", "schedule", "lr_gamma", "lr_step_every")


@dataclass
class ModelConfig:
    """The built-in recurrent models' schema. A user's model config is free-form: a
    ``_target_`` (a ``torch.nn.Module``), ``input_size`` and its constructor's keys."""

    _target_: str = BUILTIN_MODEL
    cell: Cell = Cell.lstm
    input_size: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    impl: Impl = Impl.fused
    # Multiplies the recurrent weights at initialisation (3.0 gives exploding gradients).
    recurrent_init_scale: float = 1.0


@dataclass
class PrecisionConfig:
    name: str = "fp32"
    autocast_dtype: str | None = None  # "float16" | "bfloat16"; None runs in fp32
    grad_scaler: bool = False


@dataclass
class ClippingConfig:
    max_norm: float | None = None  # None: measure the norm, do not clip


@dataclass
class HardwareConfig:
    device: Device = Device.auto
    # None: the whole node's CPUs for trials that measure time, one CPU otherwise.
    num_cpus: float | None = None
    num_gpus: float = 0.0
    # None: timed trials get their device to themselves, training-only trials pack.
    exclusive: bool | None = None
    # TEST-ONLY: run the trial's math on this device whatever Ray granted, to exercise GPU
    # placement on logical GPUs (`ray start --num-gpus 2` on a CPU machine). Recorded as
    # the tag rnnsweep.compute_device; never set it for real measurements.
    compute_device: Device | None = None


@dataclass
class TaskConfig:
    """A batch source (``_target_``, built with the keys other than ``name``, ``optimizer``
    and ``lr``) and the optimiser that trains on it."""

    _target_: str = "rnnsweep.trial.data.Regression"
    name: str = "regression"
    optimizer: Optimizer = Optimizer.adam
    lr: float = 1e-3
    schedule: Schedule = Schedule.constant  # the learning rate over the steps
    lr_gamma: float = 0.1  # schedule=step: the factor at each drop
    lr_step_every: int | None = None  # schedule=step: None drops at a third and two thirds


@dataclass
class TextTaskConfig(TaskConfig):
    path: str | None = None  # a UTF-8 text file; None: the corpus bundled with rnnsweep


@dataclass
class ObjectiveConfig:
    """The number the task function returns to a sweeper (Optuna, Nevergrad, ...)."""

    # None: the workload's headline (latency_ms when it benchmarks, best_val_loss, the
    # best held-out loss, when it only trains, stream_latency_ms_p50 when it deploys).
    metric: str | None = None
    direction: Direction = Direction.minimize


@dataclass
class WorkloadConfig:
    train: bool = True  # guarded training steps (per-step metrics)
    bench: bool = True  # forward-pass latency benchmark (summary metrics)
    deploy: bool = False  # streaming inference and export
    compare_impl: bool = False  # also time the other implementation (fused vs loop)


@dataclass
class GuardConfig:
    explode_threshold: float = 100.0  # grad norm above this counts as exploding
    vanish_threshold: float = 1e-6  # grad norm below this counts as vanishing
    saturation_level: float = 0.99  # |h| above this counts as a saturated activation
    # Fault injection, to exercise the guards and the failure path end to end:
    # steps whose input is poisoned with NaN, and a step at which the trial raises.
    inject_nan_steps: list[int] = field(default_factory=list)
    raise_at_step: int | None = None
    # TEST-ONLY: the step at which the trial hangs (a dead data source), for time limits.
    hang_at_step: int | None = None
    # A trial whose loss has been non-finite this many steps in a row stops DIVERGED at
    # once (its device freed); None: it runs all its steps.
    stop_after_nonfinite: int | None = 10


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # relative paths resolve against the launch directory
    experiment: str = "rnnsweep"
    # A running trial's per-step metrics reach its run at least this often (seconds).
    live_interval_s: float = 3.0
    # Live values the driver holds for a slow store before it drops the oldest (the run
    # says how many; the trial's final record fills them in).
    live_queue: int = 100_000


@dataclass
class CheckpointConfig:
    """Saving a training trial's whole state, so that a retried or resumed trial goes on
    from its last save instead of step 0. Off unless every_s or every_steps is set."""

    every_s: float | None = None
    every_steps: int | None = None
    # Relative paths resolve against the driver's directory (a local directory by
    # default); on a cluster, a path every node shares.
    dir: str = ".rnnsweep/checkpoints"
    keep: bool = False  # keep a finished trial's last checkpoint (else deleted)
    # Where saves live: "dir" (above), or "artifacts": each save also travels to the
    # driver and onto the trial's run (checkpoint/checkpoint.pt), for a cluster whose
    # nodes share no directory. A retry on any node, and a rerun after the driver died,
    # resume from the run's copy.
    store: str = "dir"


@dataclass
class RayConfig:
    address: str | None = None  # None: $RAY_ADDRESS, else an embedded local Ray
    max_retries: int = 2  # retries of a trial whose worker process died
    rerun: bool = False  # run trials even when an identical config already finished
    # What travels to a named cluster's nodes (Ray's runtime_env), so that they need only
    # Python, Ray and torch: rnnsweep itself, the user's packages, a working directory.
    ship: bool = True
    packages: list[str] = field(default_factory=list)  # import names of the user's code
    working_dir: str | None = None  # e.g. "." : uploaded, and the trials' working dir


@dataclass
class RnnsweepConfig:
    # Any: a user's model or task config brings its own keys; the built-ins are typed by
    # the schemas they extend (builtin_model_schema, builtin_task_schema).
    model: Any = MISSING
    precision: PrecisionConfig = MISSING
    clipping: ClippingConfig = MISSING
    hardware: HardwareConfig = MISSING
    task: Any = MISSING
    workload: WorkloadConfig = MISSING
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    batch: int = 32
    seq_len: int = 100
    steps: int = 20  # guarded training steps
    # Held-out evaluation every this many steps (and at the last); None: a tenth of steps.
    eval_every: int | None = None
    trial_timeout_s: float | None = None  # a trial past it ends TIMED_OUT
    sweep_timeout_s: float | None = None  # the sweep closes at it, unfinished trials KILLED
    seed: int = 0
    warmup: int = 3  # untimed calls before any measurement
    min_run_time: float = 1.0  # seconds of timed forward calls; the median is reported
    repeats: int = 20  # timed streams and exported-model calls (deploy workload)
    chunk_len: int = 25  # streaming chunk length (deploy workload)


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="rnnsweep_schema", node=RnnsweepConfig)
    # Outside any group, so they are offered neither as a model or task nor in --help.
    store.store(name="builtin_model_schema", node=ModelConfig)
    store.store(name="builtin_task_schema", node=TaskConfig)
    store.store(name="text_task_schema", node=TextTaskConfig)


def conf_dir() -> Path:
    """``conf/`` ships inside the wheel; in a source checkout it sits beside the package."""
    return _resource_dir("conf")


def sweeps_dir() -> Path:
    return _resource_dir("sweeps")


def _resource_dir(name: str) -> Path:
    """``conf/`` and ``sweeps/`` sit at the top of a checkout; ``rnnsweep/conf`` and
    ``rnnsweep/sweeps`` link to them, and the wheel ships their files there."""
    found = Path(__file__).resolve().parents[1] / name
    if not found.is_dir():
        raise FileNotFoundError(f"rnnsweep: cannot find its {name}/ directory at {found}")
    return found

"""Bounds on every numeric key, and a memory estimate of each trial, checked up front.

A value that cannot work (``task.lr=inf``), that would run for hours (``steps=10000000``)
or that cannot fit in memory (``model.hidden_size=100000000``) is refused before anything
starts, instead of a silent NaN, a hang, or an allocation failure inside the trial. The
memory estimate needs no torch: it is arithmetic on the config.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from rnnsweep.config.errors import ConfigError

# Upper bounds: beyond them a trial runs for hours on any machine rnnsweep targets.
MAX_STEPS = 100_000
MAX_REPEATS = 10_000
MAX_WARMUP = 10_000
MAX_MIN_RUN_TIME_S = 600.0
MAX_RETRIES = 100
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit value; the trial also uses seed + 1
MAX_POLL_S = 60.0
# hydra.launcher.max_trials' default, also for sweeps run by another launcher.
DEFAULT_MAX_TRIALS = 10_000
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
BYTES_PER_VALUE = 4  # fp32 weights; reduced precision only shrinks activations
# Adam keeps two moments per weight; with the weights and their gradients, four copies.
WEIGHT_COPIES_TRAINING = 4


def check_bounds(cfg: DictConfig) -> None:
    """Every numeric key of one trial's config."""
    _within(cfg, "steps", 0, MAX_STEPS)
    _within(cfg, "repeats", 1, MAX_REPEATS)
    _within(cfg, "warmup", 0, MAX_WARMUP)
    _within(cfg, "seed", 0, MAX_SEED)
    _within(cfg, "ray.max_retries", 0, MAX_RETRIES)
    finite(cfg, "min_run_time", lambda v: 0 < v <= MAX_MIN_RUN_TIME_S,
            f"a number of seconds in (0, {MAX_MIN_RUN_TIME_S:g}]")
    # A user's task may leave the learning rate to the default, and a user's model has
    # only the keys its constructor takes: what a config does not declare is not checked.
    if OmegaConf.select(cfg, "task.lr") is not None:
        finite(cfg, "task.lr", lambda v: v > 0, "a finite learning rate > 0")
    if OmegaConf.select(cfg, "model.recurrent_init_scale") is not None:
        finite(cfg, "model.recurrent_init_scale", lambda v: True, "a finite number")
    finite(cfg, "guard.explode_threshold", lambda v: v > 0, "a finite number > 0")
    finite(cfg, "guard.vanish_threshold", lambda v: v >= 0, "a finite number >= 0")
    finite(cfg, "guard.saturation_level", lambda v: 0 < v <= 1, "a number in (0, 1]")
    finite(cfg, "hardware.num_gpus", lambda v: v >= 0, "a finite number >= 0")
    for key in ("clipping.max_norm", "hardware.num_cpus"):
        if OmegaConf.select(cfg, key) is not None:
            finite(cfg, key, lambda v: v > 0, "null or a finite number > 0")
    _steps_within(cfg)


def check_launcher(base: DictConfig) -> None:
    """The launcher's own numbers (``hydra.launcher.*``), from the sweep's base config."""
    poll = OmegaConf.select(base, "hydra.launcher.poll_s")
    if poll is not None:
        finite(base, "hydra.launcher.poll_s", lambda v: 0 < v <= MAX_POLL_S,
                f"a number of seconds in (0, {MAX_POLL_S:g}]")
    for key in ("hydra.launcher.num_cpus", "hydra.launcher.num_gpus"):
        value = OmegaConf.select(base, key)
        if value is not None and value < 0:
            raise ConfigError(f"{key}={value}: must be null or a number >= 0")


def check_experiment_name(base: DictConfig) -> None:
    """An experiment is a name, not a path: it names the store's artifact directory
    (``mlartifacts/<experiment>``), so ``../..`` or ``/abs`` would write elsewhere."""
    name = OmegaConf.select(base, "tracking.experiment")
    if isinstance(name, str) and ("/" in name or "\\" in name or "\0" in name
                                  or name.strip() in (".", "..")):
        raise ConfigError(f"tracking.experiment={name}: must be a name, not a path "
                          "(no '/', '\\', '.' or '..')")


def check_trial_count(count: int, base: DictConfig) -> None:
    """A grid larger than ``hydra.launcher.max_trials`` is refused before its trials
    are composed (checking costs milliseconds a trial: a million would take hours)."""
    limit = OmegaConf.select(base, "hydra.launcher.max_trials", default=None)
    if limit is None:
        limit = DEFAULT_MAX_TRIALS
    if count > limit:
        raise ConfigError(f"the sweep has {count:,} trials, more than "
                          f"hydra.launcher.max_trials={limit:,}; sweep fewer values, or raise "
                          f"hydra.launcher.max_trials")


def check_memory(cfg: DictConfig, available_bytes: int | None = None) -> None:
    """Refuses a trial whose weights, optimizer state and activations cannot fit in the
    memory it will have (this machine's, unless a Ray cluster is named)."""
    if OmegaConf.select(cfg, "ray.address") or os.environ.get("RAY_ADDRESS"):
        return  # the nodes' memory is not known before Ray connects
    if OmegaConf.select(cfg, "model.hidden_size") is None:
        return  # a user's model that declares no size: nothing to estimate from
    available = available_bytes or machine_memory_bytes()
    needed = trial_memory_bytes(cfg)
    if available and needed > available:
        sizes = "".join(f"model.{key}={OmegaConf.select(cfg, f'model.{key}')}, "
                        for key in ("hidden_size", "num_layers")
                        if OmegaConf.select(cfg, f"model.{key}") is not None)
        raise ConfigError(
            f"{sizes}batch={cfg.batch}, seq_len={cfg.seq_len}: the trial needs about "
            f"{_size(needed)} (weights, optimizer state, activations) but this machine has "
            f"{_size(available)}")


def trial_memory_bytes(cfg: DictConfig) -> int:
    gates, hidden, inputs, layers = _shape(cfg)
    weights = weight_count(cfg)
    copies = WEIGHT_COPIES_TRAINING if cfg.workload.train else 1
    # Per time step and layer, training keeps the gates and the hidden and cell states.
    activations = cfg.batch * cfg.seq_len * (layers * hidden * (gates + 2) + inputs)
    return BYTES_PER_VALUE * (copies * weights + activations)


def weight_count(cfg: DictConfig) -> int:
    """The model's parameters: per layer, each gate's input and recurrent weights and its
    two biases (layer one reads the input, the others the layer below); then the head."""
    gates, hidden, inputs, layers = _shape(cfg)
    recurrent = gates * hidden * ((inputs + hidden + 2) + (layers - 1) * (2 * hidden + 2))
    return recurrent + hidden + 1


def _shape(cfg: DictConfig) -> tuple[int, int, int, int]:
    """Gates, hidden size, input size and layers. A user's model without ``cell`` or
    ``num_layers`` counts as one plain recurrent layer: the estimate then errs low, so
    it refuses only what surely cannot fit."""
    m = cfg.model
    cell = OmegaConf.select(m, "cell")
    gates = GATES.get(getattr(cell, "name", str(cell)), 4) if cell is not None else 1
    layers = OmegaConf.select(m, "num_layers") or 1
    return gates, m.hidden_size, m.input_size, layers


def machine_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _within(cfg: DictConfig, key: str, low: int, high: int) -> None:
    value = OmegaConf.select(cfg, key)
    if not low <= value <= high:
        raise ConfigError(f"{key}={value}: must be an integer in [{low}, {high}]")


def finite(cfg: DictConfig, key: str, ok: Callable[[float], bool], allowed: str) -> None:
    """``key`` is a finite number for which ``ok`` holds, or a one-line refusal."""
    value = OmegaConf.select(cfg, key)
    if value is None or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{key}={value}: must be {allowed}")


def _steps_within(cfg: DictConfig) -> None:
    """Fault injection at a step the trial never reaches would silently do nothing."""
    steps = cfg.steps
    outside = [s for s in cfg.guard.inject_nan_steps if not 0 <= s < steps]
    if outside:
        raise ConfigError(f"guard.inject_nan_steps={list(cfg.guard.inject_nan_steps)}: "
                          f"step {outside[0]} is outside 0..{steps - 1} (steps={steps})")
    at = cfg.guard.raise_at_step
    if at is not None and not 0 <= at < steps:
        raise ConfigError(f"guard.raise_at_step={at}: outside 0..{steps - 1} (steps={steps})")


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:,.0f} {unit}"
        nbytes /= 1000
    return f"{nbytes:,.0f} PB"

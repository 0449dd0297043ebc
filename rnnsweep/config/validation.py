"""Bad input gets one clear line before any trial starts.

The command line is expanded the way Hydra's basic sweeper expands it, every trial's
config is composed, and each one is checked. Hydra's own multi-line errors are turned
into one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnsweep import config
from rnnsweep.sweep.composer import compose_trials

_parser = OverridesParser.create()


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


@dataclasses.dataclass(frozen=True)
class CheckedCommand:
    base: DictConfig  # the sweep's base config, its ``hydra`` node included
    overrides: list[list[str]]  # each trial's overrides, as Hydra's sweeper expands them
    trials: list[DictConfig]  # each trial's composed config (no ``hydra`` node)


def check_overrides(overrides: list[str], multirun: bool) -> CheckedCommand:
    """Composes and checks every trial the command line describes."""
    try:
        parsed = _parser.parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse the overrides: {_first_line(str(exc))}") from None
    # Hydra's own settings (hydra.*) are not trial config; the compose API cannot take all
    # of them, and Hydra checks them itself. The launcher's are kept: the CLI starts Ray
    # from them.
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()
             and not (o.key_or_group.startswith("hydra.")
                      and not o.key_or_group.startswith("hydra.launcher."))]
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(f"{sweeps[0]}: a list of values needs -m (multirun)")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.conf_dir()), version_base="1.3"):
        base = _compose(fixed, hydra=True)
        trials = [fixed]
        if multirun:
            # The sweeper reads hydra.sweeper.params first; command-line values win.
            from_file = {k: f"{k}={v}" for k, v in (base.hydra.sweeper.params or {}).items()}
            by_key = {**from_file, **{line.split("=", 1)[0]: line for line in overrides
                                      if not line.startswith("hydra.")}}
            expanded = _parser.parse_overrides(list(by_key.values()))
            trials = BasicSweeper.split_arguments(expanded, None)[0]
        composed = compose_trials(trials, _compose, GlobalHydra.instance().config_loader())
        for trial in composed:
            check_trial(trial)
    GlobalHydra.instance().clear()
    return CheckedCommand(base, [list(t) for t in trials], composed)


def check_trial(cfg: DictConfig) -> None:
    positive_ints = ("batch", "seq_len", "repeats", "chunk_len", "model.input_size",
                     "model.hidden_size", "model.num_layers")
    for key in positive_ints:
        _require(cfg, key, lambda v: v >= 1, "an integer >= 1")
    for key in ("steps", "warmup", "seed"):
        _require(cfg, key, lambda v: v >= 0, "an integer >= 0")
    _require(cfg, "min_run_time", lambda v: v > 0, "a number of seconds > 0")
    _require(cfg, "task.lr", lambda v: v > 0, "a learning rate > 0")
    _require(cfg, "clipping.max_norm", lambda v: v is None or v > 0, "null or a number > 0")
    _require(cfg, "hardware.num_cpus", lambda v: v is None or v > 0, "null or a number > 0")
    _require(cfg, "hardware.num_gpus", lambda v: v >= 0, "a number >= 0")
    _require(cfg, "precision.autocast_dtype", lambda v: v in (None, "float16", "bfloat16"),
             "one of null, float16, bfloat16")
    if cfg.task.name == "adding" and cfg.model.input_size < 2:
        raise ConfigError(f"model.input_size={cfg.model.input_size}: task=adding needs >= 2 "
                          "(a value channel and a marker channel)")
    if cfg.hardware.device == "cuda" and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("hardware=gpu: this machine has no CUDA device; allowed here: "
                              "hardware=auto or hardware=cpu (or name a Ray cluster with GPUs)")


def _require(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not ok(value):
        raise ConfigError(f"{key}={value}: must be {allowed}")


def _compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    try:
        return compose("config", overrides=overrides, return_hydra_config=hydra)
    except MissingConfigException as exc:
        raise ConfigError(_missing_option(exc, overrides)) from None
    except (ConfigCompositionException, OmegaConfBaseException) as exc:
        raise ConfigError(_composition_error(exc, overrides)) from None


def _missing_option(exc: MissingConfigException, overrides: list[str]) -> str:
    group, _, value = (exc.missing_cfg_file or "").rpartition("/")
    allowed = ", ".join(exc.options or [])
    if group:
        return f"{group}={value}: no such {group}; allowed: {allowed}"
    return _first_line(str(exc))


def _composition_error(exc: Exception, overrides: list[str]) -> str:
    message = _first_line(str(exc))
    cause = exc.__cause__
    culprit = next((o for o in overrides if f"override {o}" in message
                    or f"'{o.split('=', 1)[0].lstrip('+~')}'" in message), None)
    if message.startswith("Could not override") and culprit:
        key = culprit.split("=", 1)[0]
        parent, _, _ = key.rpartition(".")
        where = f" in {parent}" if parent else ""
        return f"{culprit}: unknown key '{key}'; allowed keys{where}: " \
               f"{', '.join(_schema_keys(parent))}"
    if cause is not None and culprit:
        return f"{culprit}: {_first_line(str(cause))}"
    return message


def _schema_keys(parent: str) -> Iterable[str]:
    """The keys the schema declares under ``parent`` (a dotted path of dataclass fields)."""
    node = config.RnnsweepConfig
    for part in filter(None, parent.split(".")):
        node = typing.get_type_hints(node).get(part)
        if not dataclasses.is_dataclass(node):
            return []
    return sorted(f.name for f in dataclasses.fields(node))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text

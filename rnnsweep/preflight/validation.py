"""Bad input gets one clear line before any trial starts.

The command line is expanded the way Hydra's basic sweeper expands it, every trial's
config is composed, and each one is checked. Hydra's own multi-line errors are turned
into one line naming the key and what is allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from collections.abc import Callable, Iterable, Iterator

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnsweep import config
from rnnsweep.adapters import hydra_private
from rnnsweep.config import bounds, long_trials
from rnnsweep.config.command import Command, parse
from rnnsweep.config.errors import ConfigError
from rnnsweep.config.schema import BUILTIN_MODEL, BUILTIN_TASKS, TRAINING_KEYS
from rnnsweep.preflight import targets
from rnnsweep.sweep.composer import compose_trials, input_line
from rnnsweep.text import first_line

__all__ = ["CheckedCommand", "ConfigError", "check_overrides", "check_trial"]

_parser = OverridesParser.create()


@dataclasses.dataclass(frozen=True)
class CheckedCommand:
    base: DictConfig  # the sweep's base config, its ``hydra`` node included
    overrides: list[list[str]]  # each trial's overrides, as Hydra's sweeper expands them
    # Each trial's composed config (no ``hydra`` node); with ``whole=False``, only what
    # the CLI still reads of it (its resources: ``hardware`` and ``workload``), shared
    # between trials alike: a thousand whole configs weigh over 50 MB.
    trials: list[DictConfig]


# Hydra settings that change what is composed or how it is swept; validation composes
# with them. Others (output dirs, logging) Hydra checks itself.
_HYDRA_KEPT = ("hydra.launcher.", "hydra.sweeper.", "hydra.searchpath")


def check_overrides(overrides: list[str], multirun: bool,
                    command: Command | None = None, whole: bool = True,
                    on_size: Callable[[int], None] | None = None) -> CheckedCommand:
    """Composes and checks every trial the command line describes, from the config the
    command names (its ``--config-dir``, ``--config-name``, ``hydra.searchpath``...).
    ``on_size`` hears the sweep's size as soon as it is known, before the trials are
    checked (milliseconds each)."""
    command = command or parse([])
    try:
        parsed = _parser.parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse the overrides: {first_line(str(exc))}") from None
    # Hydra's own settings (hydra.*) are not trial config; the compose API cannot take all
    # of them, and Hydra checks them itself. The launcher's are kept: the CLI starts Ray
    # from them.
    fixed = [input_line(o) for o in parsed if not o.is_sweep_override()
             and not (o.key_or_group.startswith("hydra.")
                      and not o.key_or_group.startswith(_HYDRA_KEPT))]
    sweeps = [input_line(o) for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(f"{sweeps[0]}: a list of values needs -m (multirun)")
    name = command.config_name
    with _hydra(command):
        base = _compose(fixed, name, hydra=True)
        check_objective(base)
        bounds.check_experiment_name(base)
        # The sweeper reads hydra.sweeper.params first; command-line values win.
        from_file = {k: f"{k}={v}" for k, v in (base.hydra.sweeper.params or {}).items()}
        given = {line.split("=", 1)[0].lstrip("+~"): line for line in overrides
                 if not line.startswith("hydra.")}
        trials = [fixed]
        if not multirun:
            _check_single_run(from_file, given, overrides)
        else:
            expanded = [_discrete(o) for o in _parser.parse_overrides(
                list({**from_file, **given}.values()))]
            count = _size(expanded)
            bounds.check_trial_count(count, base)
            if on_size is not None:
                on_size(count)
            trials = hydra_private.split_sweep(expanded)
        composed = compose_trials(trials, lambda trial: _compose(trial, name),
                                  GlobalHydra.instance().config_loader())
        kept: list[DictConfig] = []
        try:
            # One trial at a time: checked, probed, and let go but for its resources.
            targets.check(_checked(composed, kept, whole))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    bounds.check_launcher(base)
    long_trials.check_sweep(base)
    return CheckedCommand(base, [list(t) for t in trials], kept)


def _size(overrides: list[Override]) -> int:
    """How many trials Hydra's basic sweeper makes of ``overrides``: the product of each
    swept key's number of values, counted without building the grid."""
    count = 1
    for override in overrides:
        if override.is_sweep_override():
            count *= sum(1 for _ in override.sweep_string_iterator())
    return count


def _check_single_run(from_file: dict[str, str], given: dict[str, str],
                      overrides: list[str]) -> None:
    """A config that sets a sweep (a ready sweep's ``hydra.sweeper.params``) run without
    -m: Hydra would run one trial of it and drop the sweep without a word."""
    swept = [line for key, line in from_file.items() if key not in given]
    if not swept:
        return  # every swept key has one value on the command line: one trial is meant
    ready = next((o for o in overrides if o.lstrip("+").startswith("sweep=")), None)
    what = ready or "the config"
    raise ConfigError(f"{what} is a sweep ({' '.join(swept)}): add -m to run it, "
                      f"e.g. python -m rnnsweep -m {' '.join(overrides)}")


def _checked(composed: Iterable[DictConfig], kept: list[DictConfig], whole: bool
             ) -> Iterator[DictConfig]:
    alike: dict[str, DictConfig] = {}
    for trial in composed:
        check_trial(trial)
        if whole:
            kept.append(trial)
            yield trial
            continue
        groups = [k for k in ("hardware", "workload") if k in trial]
        # Keyed by the groups' raw values: a copy is made only for a new one.
        key = repr([OmegaConf.to_container(trial[k], resolve=False) for k in groups])
        if key not in alike:
            alike[key] = OmegaConf.masked_copy(trial, groups)
        kept.append(alike[key])
        yield trial


@contextlib.contextmanager
def _hydra(command: Command) -> Iterator[None]:
    """Hydra initialised on the command's own search path (``--config-dir`` included)."""
    GlobalHydra.instance().clear()
    try:
        hydra_private.start(command.task_name, command.search_path())
        yield
    finally:
        GlobalHydra.instance().clear()


def _discrete(override: Override) -> Override:
    """A range another sweeper samples from (Optuna's ``interval``) is checked at its
    two ends; Hydra's basic sweeper, which expands the trials here, takes only lists."""
    if not override.is_sweep_override() or override.is_discrete_sweep():
        return override
    sweep = override.value()
    # Hydra's parser fills both ends; its type allows None.
    if not isinstance(sweep, IntervalSweep) or sweep.start is None or sweep.end is None:
        return override
    ends: list[float] = [sweep.start, sweep.end]
    if "int" in sweep.tags:
        ends = [int(v) for v in ends]
    return _parser.parse_overrides([f"{override.get_key_element()}={ends[0]},{ends[1]}"])[0]


def check_objective(base: DictConfig) -> None:
    """A sweeper that optimises (Optuna's ``direction``) must agree with the objective."""
    direction = OmegaConf.select(base, "hydra.sweeper.direction")
    objective = OmegaConf.select(base, "objective.direction")
    if isinstance(direction, str) and objective is not None and direction != str(objective):
        raise ConfigError(f"hydra.sweeper.direction={direction}: must match "
                          f"objective.direction={objective}; set both to minimize or maximize")


def check_trial(cfg: DictConfig) -> None:
    positive_ints = ("batch", "seq_len", "repeats", "chunk_len", "model.input_size",
                     *(k for k in ("model.hidden_size", "model.num_layers")
                       if OmegaConf.select(cfg, k) is not None))  # a user's model may lack them
    try:
        targets.check_config(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key in positive_ints:
        _require(cfg, key, lambda v: v >= 1, "an integer >= 1")
    _require(cfg, "precision.autocast_dtype", lambda v: v in (None, "float16", "bfloat16"),
             "one of null, float16, bfloat16")
    bounds.check_bounds(cfg)  # steps, seed, min_run_time, lr, clipping, hardware, ...
    long_trials.check_trial(cfg)  # live metrics, evaluation, checkpoints, time limits
    bounds.check_memory(cfg)
    if OmegaConf.select(cfg, "task.name") == "adding" and cfg.model.input_size < 2:
        raise ConfigError(f"model.input_size={cfg.model.input_size}: task=adding needs >= 2 "
                          "(a value channel and a marker channel)")
    gpus = float(cfg.hardware.num_gpus or 0)
    if cfg.hardware.device == "cpu" and gpus > 0:
        raise ConfigError(f"hardware.num_gpus={gpus:g}: hardware.device=cpu uses no GPU; "
                          "allowed: hardware=gpu, hardware=shared_gpu or hardware=auto")
    wants_gpu = cfg.hardware.device == "cuda" or gpus > 0
    if wants_gpu and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{_gpu_request(cfg)}: this machine has no CUDA device; allowed "
                              "here: hardware=auto or hardware=cpu with hardware.num_gpus=0 (or "
                              "name a Ray cluster with GPUs: ray.address=HOST:PORT)")


def _gpu_request(cfg: DictConfig) -> str:
    """The GPU request in the words of the option that makes it (gpu or shared_gpu)."""
    gpus = float(cfg.hardware.num_gpus or 0)
    if cfg.hardware.device == "auto":
        return f"hardware.num_gpus={gpus:g}"
    if 0 < gpus < 1:
        return f"hardware=shared_gpu (hardware.num_gpus={gpus:g}, a fraction of one GPU)"
    return f"hardware=gpu (hardware.device=cuda, hardware.num_gpus={gpus:g})"


def _require(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not ok(value):
        raise ConfigError(f"{key}={value}: must be {allowed}")


def _compose(overrides: list[str], config_name: str = "config",
             hydra: bool = False) -> DictConfig:
    try:
        return compose(config_name, overrides=overrides, return_hydra_config=hydra)
    except MissingConfigException as exc:
        raise ConfigError(_missing_option(exc, overrides)) from None
    except (ConfigCompositionException, OmegaConfBaseException) as exc:
        raise ConfigError(_composition_error(exc, overrides, config_name)) from None


def _missing_option(exc: MissingConfigException, overrides: list[str]) -> str:
    group, _, value = (exc.missing_cfg_file or "").rpartition("/")
    allowed = ", ".join(exc.options or [])
    if group:
        return f"{group}={value}: no such {group}; allowed: {allowed}"
    return first_line(str(exc))


def _composition_error(exc: Exception, overrides: list[str], config_name: str = "config"
                       ) -> str:
    message = first_line(str(exc))
    cause = exc.__cause__
    culprit = next((o for o in overrides if f"override {o}" in message
                    or f"'{o.split('=', 1)[0].lstrip('+~')}'" in message), None)
    if message.startswith("Could not override") and culprit:
        key = culprit.split("=", 1)[0]
        parent, _, _ = key.rpartition(".")
        where = f" in {parent}" if parent else ""
        allowed = _allowed_keys(parent, [o for o in overrides if o != culprit], config_name)
        return f"{culprit}: unknown key '{key}'; allowed keys{where}: {', '.join(allowed)}"
    if message.startswith("Could not append to config") and culprit:
        key = culprit.split("=", 1)[0].lstrip("+")
        hint = (" (a model of your own needs a config of its own: see 'Your own model' "
                "in --help)" if key == "model._target_" else "")
        return f"{culprit}: {key} is already set; override it without '+'{hint}"
    if cause is not None and culprit:
        return f"{culprit}: {first_line(str(cause))}"
    return message


def _allowed_keys(parent: str, others: list[str], config_name: str) -> Iterable[str]:
    """The keys ``parent`` takes. Under a user's model or task (``_target_`` not a
    built-in) that is its constructor's parameters, or its config's keys where the
    constructor takes any keyword; elsewhere the schema's."""
    group = parent.split(".", 1)[0]
    if group not in _FREE_FORM or "." in parent:
        return _schema_keys(parent)
    try:
        node = compose(config_name, overrides=others)[group]
    except Exception:  # noqa: BLE001 - the other overrides fail too: say what the schema has
        return _schema_keys(parent)
    target = str(node.get("_target_"))
    if target == BUILTIN_MODEL or target in BUILTIN_TASKS:
        return _schema_keys(parent)
    passed = {"model": {"output_size"},
              "task": {"batch", "seq_len", "input_size", "device", "seed"}}[group]
    params = targets.constructor_keys(target)
    keys = set(node.keys()) if params is None else set(params) - passed
    return sorted(keys | {"_target_"} | (set(TRAINING_KEYS) if group == "task" else set()))


def _schema_keys(parent: str) -> Iterable[str]:
    """The keys the schema declares under ``parent`` (a dotted path of dataclass fields)."""
    node: object = config.RnnsweepConfig
    for part in filter(None, parent.split(".")):
        if not dataclasses.is_dataclass(node):
            return []
        # model and task are free-form (a user's own); the built-ins' schemas name theirs.
        node = _FREE_FORM.get(part) if node is config.RnnsweepConfig and part in _FREE_FORM \
            else typing.get_type_hints(node).get(part)
    if not dataclasses.is_dataclass(node):
        return []
    return sorted(f.name for f in dataclasses.fields(node))


_FREE_FORM = {"model": config.schema.ModelConfig, "task": config.schema.TaskConfig}

"""Everything about ``hydra/sweeper=rnnsweep_optuna`` that can be wrong on the command
line, checked before anything starts (the CLI calls ``check`` right after composing the
trials, before Ray or the store): one line naming the key and what is allowed.

``objective.metric`` itself is checked for every sweep by
``rnnsweep.config.long_trials.check_sweep``; here, what a pruner or a second objective
adds: a pruner judges the live values a training trial reports, and a second objective
must be a metric the workload records.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from rnnsweep.config.errors import ConfigError

TARGET = "hydra_plugins.rnnsweep_optuna_sweeper.rnnsweep_optuna_sweeper.RnnsweepOptunaSweeper"
DIRECTIONS = ("minimize", "maximize")


def is_ours(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.sweeper._target_", default="") == TARGET


def search_arguments(config: DictConfig, overrides: Sequence[str]) -> list[str]:
    """``hydra.sweeper.params`` first, then the command line's trial overrides (Hydra's
    own ``hydra.*`` settings are not trial config)."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    return [*(f"{k}={v}" for k, v in params.items()),
            *(o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/")))]


def check(config: DictConfig, overrides: Sequence[str]) -> None:
    """Raises ConfigError; nothing to check for another sweeper. Opens the storage."""
    if not is_ours(config):
        return
    from rnnsweep.search import choices, space, storage
    from rnnsweep.sweep import objective

    settings = config.hydra.sweeper
    _one_of("hydra.sweeper.sampler", settings.sampler, choices.SAMPLERS)
    _one_of("hydra.sweeper.pruner", settings.pruner, choices.PRUNERS)
    for key in ("n_trials", "n_jobs"):
        if int(settings[key]) < 1:
            raise ConfigError(f"hydra.sweeper.{key}={settings[key]}: must be an integer >= 1")
    if settings.reduction_factor < 2:
        raise ConfigError(f"hydra.sweeper.reduction_factor={settings.reduction_factor}: must "
                          "be an integer >= 2 (a rung keeps 1/reduction_factor of its trials)")
    steps = int(OmegaConf.select(config, "steps", default=0) or 0)
    if settings.min_resource is not None and not 1 <= settings.min_resource <= steps:
        raise ConfigError(f"hydra.sweeper.min_resource={settings.min_resource}: must be "
                          f"between 1 and steps={steps}")
    metric, direction = objective.settings(config)
    if settings.direction is not None and str(settings.direction) != direction:
        raise ConfigError(
            f"hydra.sweeper.direction={settings.direction}: disagrees with objective.direction="
            f"{direction}; the direction comes from objective.direction alone (leave "
            "hydra.sweeper.direction unset)")
    stopper = OmegaConf.select(config, "hydra.launcher.stopper", default="none")
    if stopper not in (None, "none"):
        raise ConfigError(
            f"hydra.launcher.stopper={stopper}: under hydra/sweeper=rnnsweep_optuna, Optuna's "
            "pruner stops trials; set hydra.sweeper.pruner=successive_halving (ASHA), median or "
            "hyperband instead; allowed hydra.launcher.stopper: none")
    if settings.pruner != "none":
        _check_live(config, settings.pruner, metric)
    if settings.second_objective:
        _check_second(config, settings)
    try:
        parsed = space.parse(search_arguments(config, overrides))
        if not parsed.distributions:
            raise space.SpaceError("no search space: give at least one parameter as "
                                   "choice(...), range(...) or interval(...)")
        if settings.sampler == "grid":
            parsed.grid()
        storage.open_storage(settings.storage)
    except ValueError as exc:  # SpaceError, StorageError
        raise ConfigError(str(exc)) from None


def _check_second(config: DictConfig, settings: DictConfig) -> None:
    from rnnsweep.search import choices

    _one_of("hydra.sweeper.second_direction", settings.second_direction, DIRECTIONS)
    if settings.sampler not in choices.MULTI_OBJECTIVE:
        raise ConfigError(f"hydra.sweeper.sampler={settings.sampler}: optimises one objective; "
                          f"with hydra.sweeper.second_objective allowed: "
                          f"{', '.join(choices.MULTI_OBJECTIVE)}")
    if settings.pruner != "none":
        raise ConfigError(f"hydra.sweeper.pruner={settings.pruner}: Optuna prunes only "
                          "single-objective studies; with hydra.sweeper.second_objective "
                          "allowed: none")
    _check_metric(config, "hydra.sweeper.second_objective", str(settings.second_objective))


def _check_metric(config: DictConfig, key: str, metric: str) -> None:
    from rnnsweep.config.long_trials import produced_metrics

    produced = produced_metrics(config)
    if produced is not None and metric not in produced:
        raise ConfigError(f"{key}={metric}: this workload never records it; allowed here: "
                          f"{', '.join(sorted(produced))}")


def _check_live(config: DictConfig, pruner: str, metric: str) -> None:
    """The same rule as the launcher's stoppers: Optuna's pruners are fed the same values."""
    from rnnsweep.config.long_trials import LIVE_METRICS, LIVE_TEXT_METRICS

    if not OmegaConf.select(config, "workload.train", default=False):
        raise ConfigError(f"hydra.sweeper.pruner={pruner}: a pruner judges training trials as "
                          "they train; this workload does not train (workload=train or "
                          "train_bench); allowed here: none")
    text = OmegaConf.select(config, "task._target_") == "rnnsweep.trial.data.CharText"
    live = LIVE_METRICS | (LIVE_TEXT_METRICS if text else frozenset())
    if metric not in live:
        raise ConfigError(f"hydra.sweeper.pruner={pruner}: objective.metric={metric} is not "
                          f"reported while a trial trains; allowed: {', '.join(sorted(live))}")


def _one_of(key: str, value, allowed: Sequence[str]) -> None:
    if str(value) not in allowed:
        raise ConfigError(f"{key}={value}: no such option; allowed: {', '.join(allowed)}")

"""Everything about ``hydra/sweeper=rnnsweep_optuna`` that can be wrong on the command
line, checked before anything starts (the CLI calls ``check`` right after composing the
trials, before Ray or the store): one line naming the key and what is allowed.

The objective metric is checked against what the workload records
(``rnnsweep.search.metrics``): a misspelt ``objective.metric`` would otherwise give every
trial the worst value, and Optuna would search on nothing.
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
    _check_metric(config, "objective.metric", metric)
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
    from rnnsweep.search import metrics

    why = metrics.check(config, key, metric)
    if why:
        raise ConfigError(why)


def _one_of(key: str, value, allowed: Sequence[str]) -> None:
    if str(value) not in allowed:
        raise ConfigError(f"{key}={value}: no such option; allowed: {', '.join(allowed)}")

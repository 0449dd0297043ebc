"""Samplers and pruners by name: the only names ``hydra.sweeper.sampler`` and
``hydra.sweeper.pruner`` take (an unknown one is refused before anything starts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from rnnsweep.search.space import Space

SAMPLERS = ("tpe", "cmaes", "random", "grid", "nsga2")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
# Samplers that handle two objectives (CMA-ES optimises one).
MULTI_OBJECTIVE = ("tpe", "random", "grid", "nsga2")


def sampler(settings: Any, space: Space) -> optuna.samplers.BaseSampler:
    import optuna

    name, seed = settings.sampler, settings.seed
    if name == "tpe":
        # constant_liar (Optuna's default since 4): trials asked together, before any of
        # them is told, are spread out rather than proposed alike.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=settings.n_startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"hydra.sweeper.sampler={name}: no such sampler")


def pruner(settings: Any, steps: int) -> optuna.pruners.BasePruner:
    """``steps``: a trial's training steps, the resource a pruner budgets."""
    import optuna

    name = settings.pruner
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials,
                                           n_warmup_steps=settings.pruner_warmup_steps)
    min_resource = settings.min_resource or max(1, steps // 10)
    if name == "successive_halving":  # Optuna's asynchronous successive halving (ASHA)
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource, reduction_factor=settings.reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=steps,
                                              reduction_factor=settings.reduction_factor)
    raise ValueError(f"hydra.sweeper.pruner={name}: no such pruner")


def grid_size(space: Space) -> int:
    size = 1
    for values in space.grid().values():
        size *= len(values)
    return size

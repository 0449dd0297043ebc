"""Hydra sweeper plugin shim: ``hydra/sweeper=rnnsweep_optuna``, rnnsweep's own Optuna
sweeper on current Optuna (ask and tell, pruning on live values, persistent studies). The
work is in ``rnnsweep.search.sweeper``, imported (with Optuna) only when a sweep runs."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class RnnsweepOptunaSweeperConf:
    _target_: str = (
        "hydra_plugins.rnnsweep_optuna_sweeper.rnnsweep_optuna_sweeper.RnnsweepOptunaSweeper")
    sampler: str = "tpe"  # tpe | cmaes | random | grid | nsga2
    seed: int | None = None
    n_startup_trials: int = 10  # tpe, cmaes: random trials before the model takes over
    pruner: str = "none"  # none | median | successive_halving | hyperband
    pruner_startup_trials: int = 5  # median: finished trials before it prunes
    pruner_warmup_steps: int = 0  # median: steps of a trial before it may be pruned
    min_resource: int | None = None  # successive_halving, hyperband; None: steps // 10
    reduction_factor: int = 3  # successive_halving, hyperband
    # The study's total: a resumed study runs what its earlier sweeps left to do.
    n_trials: int = 20
    n_jobs: int = 2  # trials asked together and run in parallel on Ray
    # None: objective.direction, the one place the direction is set; any other value
    # must agree with it (kept so that Hydra-Optuna configs that set it still compose).
    direction: str | None = None
    # A second metric for a two-objective study (NSGA-II, TPE, random or grid), e.g.
    # latency_ms_per_seq beside val_loss; its direction is set here.
    second_objective: str | None = None
    second_direction: str = "minimize"
    # None: in memory. An RDB URL (sqlite:///optuna.db) or a journal file path: the study
    # outlives the driver, resumes, and optuna-dashboard shows it.
    storage: str | None = None
    study_name: str = "rnnsweep"
    params: dict[str, str] | None = None  # the search space, as hydra-optuna-sweeper's


ConfigStore.instance().store(group="hydra/sweeper", name="rnnsweep_optuna",
                             node=RnnsweepOptunaSweeperConf, provider="rnnsweep")


class RnnsweepOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = RnnsweepOptunaSweeperConf(**settings)
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: Sequence[str]) -> Any:
        from rnnsweep.search.sweeper import sweep

        return sweep(self, list(arguments))

"""Hydra launcher plugin shim: ``hydra/launcher=rnnsweep_ray``. The work is in
``rnnsweep.sweep.launcher``, imported lazily so that loading Hydra's plugins stays cheap.
An entry point too (a user's own ``@hydra.main`` app may name it): ``setup`` installs the
environment defaults before the launcher imports MLflow or Ray."""

import os
from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from rnnsweep import privacy
from rnnsweep.adapters.hydra_private import basic_sweeper


@dataclass
class RnnsweepRayLauncherConf:
    _target_: str = "hydra_plugins.rnnsweep_launcher.rnnsweep_launcher.RnnsweepRayLauncher"
    # Size of the embedded local Ray; None: this machine's CPUs and GPUs.
    num_cpus: int | None = None
    num_gpus: int | None = None
    # The Ray dashboard is off by default; when on, it binds to loopback unless told.
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    poll_s: float = 0.5  # how often the progress line refreshes
    # The most trials one sweep may expand to; a larger grid is refused before it is checked.
    max_trials: int = 10000
    # Early stopping on the trials' live values of objective.metric (rnnsweep.sweep.stopping):
    # none | asha (asynchronous successive halving) | median (median stopping rule).
    stopper: str = "none"
    # Steps before any trial may be stopped; None: a tenth of the trial's steps.
    grace_period: int | None = None
    reduction_factor: int = 3  # asha: a rung keeps the best 1/reduction_factor
    min_trials: int = 3  # median: trials that must have reached a step before it judges


ConfigStore.instance().store(group="hydra/launcher", name="rnnsweep_ray",
                             node=RnnsweepRayLauncherConf, provider="rnnsweep")
# The driver's PID in rnnsweep's default sweep dir; cached per config like Hydra's `now`.
OmegaConf.register_new_resolver("rnnsweep.pid", lambda: str(os.getpid()), use_cache=True,
                                replace=True)


class RnnsweepRayLauncher(Launcher):
    def __init__(self, **settings) -> None:
        self.settings = RnnsweepRayLauncherConf(**settings)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        privacy.telemetry_off()
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from rnnsweep.sweep.launcher import launch  # Ray, MLflow: only once a sweep runs

        return launch(self, job_overrides, initial_job_idx)


@dataclass
class RnnsweepSweeperConf(basic_sweeper.BasicSweeperConf):
    _target_: str = "hydra_plugins.rnnsweep_launcher.rnnsweep_launcher.RnnsweepSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="rnnsweep_basic",
                             node=RnnsweepSweeperConf, provider="rnnsweep")


class RnnsweepSweeper(basic_sweeper.BasicSweeper):
    """Hydra's basic sweeper, less its trial composition of every job before launching:
    the launcher composes each job itself before anything runs (and the CLI has checked
    every trial already), so that third composition was a tenth of a second per trial
    spent for nothing."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        pass

"""The checks of one command, in order, before anything starts: each refusal is one
:class:`~rnnsweep.config.errors.ConfigError` line naming the key."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from hydra_plugins.rnnsweep_launcher.rnnsweep_launcher import RnnsweepRayLauncherConf
from rnnsweep.config.command import Command
from rnnsweep.preflight.local import check_local_cpus, check_local_gpus
from rnnsweep.preflight.validation import CheckedCommand, check_overrides
from rnnsweep.search import checks as optuna_checks
from rnnsweep.store import check_store


def check_command(command: Command, on_size: Callable[[int], None]) -> CheckedCommand:
    """``command``'s trials, composed and checked; ``on_size`` is told the sweep's size
    before its trials are checked one by one."""
    multirun, overrides = command.multirun, command.overrides
    checked = check_overrides(overrides, multirun, command, whole=False, on_size=on_size)
    check_store(checked.base, overrides, multirun)
    if multirun:  # hydra/sweeper=rnnsweep_optuna: its settings, metric and storage
        optuna_checks.check(checked.base, overrides)
    if not (multirun and uses_ray_launcher(checked.base)):
        for trial in checked.trials:  # runs here, not on a Ray node
            check_local_cpus(trial)
            check_local_gpus(trial)
    return checked


def uses_ray_launcher(base: DictConfig) -> bool:
    target = OmegaConf.select(base, "hydra.launcher._target_", default="")
    return target == RnnsweepRayLauncherConf._target_

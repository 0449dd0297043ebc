"""Hydra callbacks: every multirun gets one MLflow parent run, and the CLI's Ray winds
down while the sweep's report is written."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from rnnsweep.tracking import Tracker


class SweepRunCallback(Callback):
    """Ray workers unpickle this callback with every trial (it travels in Hydra's
    context), so MLflow is imported only where the driver uses it, and its driver-side
    state is not pickled."""

    def __init__(self) -> None:
        self._started = 0.0
        self._tracker: Tracker | None = None
        self._parent: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles Hydra's context, callbacks included, into every trial. Workers run
        # no sweep-level hooks, and the driver's MLflow client would make each worker
        # import MLflow before its first trial.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from rnnsweep.tracking import PARENT_RUN_ENV, ROLE_TAG, Tracker

        self._started = time.time()
        self._tracker = Tracker(config.tracking.uri, config.tracking.experiment)
        # HydraConfig is not set yet when a multirun starts; the config carries it.
        overrides = list(config.hydra.overrides.task)
        ready = config.hydra.runtime.choices.get("sweep") or ""
        # A ready sweep is named after its file; an ad-hoc one after its overrides.
        name = ready or " ".join(overrides) or "sweep"
        params = config.hydra.sweeper.params
        params = OmegaConf.to_container(params) if params else {}
        tags = {ROLE_TAG: "sweep", "rnnsweep.sweep": ready,
                "rnnsweep.overrides": " ".join(overrides)[:4000]}
        self._parent = self._tracker.start_run(name, tags=tags)
        self._tracker.log(self._parent, params={f"sweep.{k}": str(v) for k, v in params.items()})
        os.environ[PARENT_RUN_ENV] = self._parent
        print(f"rnnsweep: sweep '{name}' -> MLflow parent run {self._parent} "
              f"(experiment '{config.tracking.experiment}' at {self._tracker.uri})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._tracker is None or self._parent is None:
            return
        from rnnsweep.sweep import objective
        from rnnsweep.sweep import summary as sweep_summary
        from rnnsweep.tracking import PARENT_RUN_ENV

        objective.log_best(self._tracker, self._parent, config)
        sweep_summary.finish_sweep(self._tracker, self._parent, time.time() - self._started)
        os.environ.pop(PARENT_RUN_ENV, None)


class StopRayAtSweepEnd(Callback):
    """Hydra runs end callbacks in reverse order; listed after ``SweepRunCallback``, this
    one begins the shutdown of the CLI's Ray before that one writes the report."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Only a Ray the CLI started is stopped here, and then this module is loaded;
        # otherwise (Hydra's basic launcher) nothing of Ray is imported at all.
        ray_session = sys.modules.get("rnnsweep.sweep.cluster")
        if ray_session is not None:
            ray_session.stop_in_background()

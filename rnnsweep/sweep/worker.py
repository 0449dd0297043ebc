"""What runs inside Ray's workers for a sweep: one trial, and the progress actor.

Kept apart from the launcher, which imports MLflow: a worker imports this module before
its first trial, and MLflow costs seconds that the trial would wait for.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from omegaconf import DictConfig

from rnnsweep.sweep.job import RECORDS_TO_DRIVER_ENV


def execute(hydra_context, task_function, config: DictConfig, singleton_state, progress,
            idx: int, driver_cwd: str) -> tuple[JobReturn, dict[str, Any]]:
    """Runs in a Ray worker: one Hydra job, exactly as the basic launcher would run it."""
    # Relative paths (Hydra's output dirs, the user's files) mean what they mean to the
    # driver, wherever the cluster was started, when this node can see that directory.
    if os.path.isdir(driver_cwd):
        os.chdir(driver_cwd)
    setup_globals()
    Singleton.set_state(singleton_state)
    os.environ[RECORDS_TO_DRIVER_ENV] = "1"
    info = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "started": time.time(),
            # The GPU ids Ray granted this trial (it sets CUDA_VISIBLE_DEVICES to them).
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()]}
    progress.start.remote(idx, info["started"], info)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    info["finished"] = time.time()
    return ret, info


@ray.remote(num_cpus=0)
class Progress:
    """Workers report when they really start, so 'running' is not a guess."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.placed: dict[int, dict[str, Any]] = {}

    def start(self, idx: int, at: float, placement: dict[str, Any] | None = None) -> None:
        self.started[idx] = at
        self.placed[idx] = placement or {}

    def placements(self) -> dict[int, dict[str, Any]]:
        """Where each started trial runs (node, GPU ids): who shares a GPU with whom."""
        return dict(self.placed)

    def snapshot(self) -> dict[int, float]:
        return dict(self.started)

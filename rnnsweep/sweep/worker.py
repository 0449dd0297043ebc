"""What runs inside Ray's workers for a sweep: one trial, and a node's fingerprint.

Kept apart from the launcher, which imports MLflow: a worker imports this module before
its first trial, and MLflow costs seconds that the trial would wait for.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from omegaconf import DictConfig

STARTED = "started"


def execute(hydra_context, task_function, config: DictConfig, singleton_state,
            driver_cwd: str) -> Iterator[Any]:
    """Runs in a Ray worker as a streaming task: first yields that it started, then the
    Hydra job's result, run exactly as the basic launcher would run it.

    The start travels on the trial's own task, not through a shared actor, so progress
    has no process whose loss could take the sweep down.
    """
    info = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "started": time.time()}
    yield STARTED, info
    # Relative paths (Hydra's output dirs, the user's files) mean what they mean to the
    # driver, wherever the cluster was started, when this node can see that directory.
    if os.path.isdir(driver_cwd):
        os.chdir(driver_cwd)
    setup_globals()
    Singleton.set_state(singleton_state)
    ret: JobReturn = run_job(hydra_context=hydra_context, task_function=task_function,
                             config=config, job_dir_key="hydra.sweep.dir",
                             job_subdir_key="hydra.sweep.subdir")
    info["finished"] = time.time()
    info["fingerprint"] = node_fingerprint() if _is_record(ret) else ""
    yield ret, info


def node_fingerprint() -> str:
    """This node's environment fingerprint (imports torch: only where trials run)."""
    from rnnsweep.trial.fingerprint import fingerprint

    return fingerprint()


def _is_record(ret: JobReturn) -> bool:
    from rnnsweep.record import TrialRecord

    try:
        return isinstance(ret.return_value, TrialRecord)
    except Exception:  # noqa: BLE001 - a failed job re-raises its exception here
        return False

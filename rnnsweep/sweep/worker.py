"""What runs inside Ray's workers for a sweep: one trial, and a node's fingerprint.

Kept apart from the launcher, which imports MLflow: a worker imports this module before
its first trial, and MLflow costs seconds that the trial would wait for.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from omegaconf import DictConfig, OmegaConf
from ray import ObjectRef

from rnnsweep.adapters import hydra_private, ray_private
from rnnsweep.sweep.composer import Patch, job_config, patched
from rnnsweep.trial import live

STARTED = "started"
LIVE = "live"  # a running trial's per-step values since the last ones
CHECKPOINT = "checkpoint"  # its latest save (checkpoint.store=artifacts), for the driver
# How long a trial's worker waits for the control actor's answer before going on
# without it (its loss never stops a trial; the driver's time limits still apply).
CONTROL_TIMEOUT_S = 5.0

# What every trial of one sweep shares (Hydra's context, the task function, Hydra's
# singletons), as object refs: Ray resolves only a task's top-level refs, so these arrive
# unresolved and a worker fetches them once per sweep, not once per trial.
SweepShared = tuple[ObjectRef, ObjectRef, ObjectRef]


@dataclass(frozen=True)
class PatchedJob:
    """Job ``idx`` as its sweep's shared composition (``base``: a one-element tuple, so
    that Ray leaves the ref for the worker to fetch once) with its own values applied."""

    base: tuple[ObjectRef]
    patch: Patch
    idx: int
    hardware: dict[str, Any] | None


@dataclass
class _Sweep:
    """This worker process's copy of the sweep it last ran a trial of. A reused worker
    skips the fetches, and above all Hydra's Singleton.set_state, which rescans
    (re-executes) every installed plugin module each call: together two thirds of a tiny
    trial's cost in its worker. Hydra's basic launcher, too, sets the singletons once and
    then runs its jobs one after another."""

    key: str  # the singleton state's object id: one per sweep
    hydra_context: Any
    task_function: Any
    # Pickled, by object id: each trial unpickles a copy of its own, three times faster
    # than OmegaConf's deepcopy of the composition.
    bases: dict[str, bytes] = field(default_factory=dict)


_current: _Sweep | None = None

TASK_NAME = "rnnsweep-trial"


@ray.remote(num_cpus=0, max_restarts=-1)
class Control:
    """Stop requests from the driver to running trials (a stopper's verdict, a time
    limit), asked for by each trial's worker every ``tracking.live_interval_s``. Made
    only for sweeps that can stop a trial; losing it stops nothing."""

    def __init__(self) -> None:
        self.stops: dict[int, tuple[str, str]] = {}

    def stop(self, idx: int, outcome: str, reason: str) -> None:
        self.stops.setdefault(idx, (outcome, reason))

    def poll(self, idx: int) -> tuple[str, str] | None:
        return self.stops.get(idx)


def execute(shared: SweepShared, job: DictConfig | PatchedJob, driver_cwd: str,
            idx: int, attempt: int = 0, control: Any = None,
            resume: tuple[str, Any] | None = None) -> Iterator[Any]:
    """Runs in a Ray worker as a streaming task: first yields that it started, then its
    per-step values every ``tracking.live_interval_s`` while it trains, then the Hydra
    job's result, run exactly as the basic launcher would run it.

    Everything travels on the trial's own task, not through a shared actor, so progress
    has no process whose loss could take the sweep down; only stop requests come the
    other way, from ``control``.
    """
    _title(f"ray::{TASK_NAME}-{idx}")
    info = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "started": time.time(), "attempt": attempt,
            # The GPU ids Ray granted this trial (it sets CUDA_VISIBLE_DEVICES to them):
            # the driver tells GPU co-tenants apart by these start infos.
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()]}
    yield STARTED, info
    # Relative paths (Hydra's output dirs, the user's files) mean what they mean to the
    # driver, wherever the cluster was started, when this node can see that directory.
    if os.path.isdir(driver_cwd):
        os.chdir(driver_cwd)
    setup_globals()
    sweep = _sweep(shared)
    config = job if isinstance(job, DictConfig) else _composed(sweep, job)
    trial_live = live.Live()
    total = OmegaConf.select(config, "steps", default=None)
    if resume is not None:
        _place_checkpoint(*resume)
    done: dict[str, Any] = {}

    def run() -> None:
        with live.activated(trial_live):
            try:
                # Hydra's run_job, as its basic launcher runs each job (cheaper copies).
                done["ret"] = hydra_private.run_job(
                    hydra_context=sweep.hydra_context, task_function=sweep.task_function,
                    config=config, job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir")
            except BaseException as exc:  # noqa: BLE001 - handed to the driver below
                done["error"] = exc

    # The trial trains on a thread of its own; this one sends what it measures as it
    # goes. A trial shorter than one interval costs nothing more than the thread.
    thread = threading.Thread(target=run, name=f"rnnsweep-trial-{idx}", daemon=True)
    thread.start()
    interval = float(OmegaConf.select(config, "tracking.live_interval_s", default=3.0) or 3.0)
    while True:
        thread.join(interval)
        if not thread.is_alive():
            break  # what it has not sent yet is in its record: one write, not two
        rows = trial_live.drain()
        if rows:
            yield LIVE, {"rows": rows, "steps": total}
        saved = _read(trial_live.take_saved())
        if saved is not None:
            yield CHECKPOINT, saved
        if control is not None and trial_live.stop is None:
            stop = _asked_to_stop(control, idx)
            if stop is not None:
                trial_live.request_stop(*stop)
    if "error" in done:
        raise done["error"]
    ret: JobReturn = done["ret"]
    info["finished"] = time.time()
    info["fingerprint"] = ""
    if _is_record(ret):
        info["fingerprint"] = node_fingerprint()
        # The job's Hydra config, over 100 kB of objects, would cost the driver its
        # unpickling for nothing: the record and the driver's own config say everything.
        ret.cfg = ret.hydra_cfg = None
    yield ret, info


def _read(path: str | None) -> bytes | None:
    """A save's file, whole (a newer save replaces it atomically, never in part)."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:  # the trial ended and its checkpoints went meanwhile
        return None


def _place_checkpoint(config_hash: str, ref: tuple[ray.ObjectRef[bytes]] | bytes) -> None:
    """A retried or resumed trial's resume point, from its run (checkpoint.store=artifacts),
    where the trial looks for it on this node."""
    from rnnsweep.trial.checkpoint import FILE, relayed_dir

    data = ray.get(ref[0]) if isinstance(ref, tuple) else ref
    directory = relayed_dir(config_hash)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{FILE}.{os.getpid()}.resume"
    tmp.write_bytes(data)
    os.replace(tmp, directory / FILE)


def _asked_to_stop(control: Any, idx: int) -> tuple[str, str] | None:
    try:
        return ray.get(control.poll.remote(idx), timeout=CONTROL_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - see CONTROL_TIMEOUT_S
        return None


def _title(title: str) -> None:
    """The worker's process title while this trial runs (``ps`` shows which trial a
    worker runs; Ray titles it after the task, and back to ``ray::IDLE`` after it).
    Ray's own title setter: a Ray without it leaves its title as it is."""
    ray_private.set_process_title(title)


def _sweep(shared: SweepShared) -> _Sweep:
    """The sweep's Hydra context and task function, its singletons in place."""
    global _current
    context_ref, task_ref, state_ref = shared
    key = state_ref.hex()
    if _current is None or _current.key != key:
        hydra_context, task_function, state = ray.get([context_ref, task_ref, state_ref])
        Singleton.set_state(state)
        _current = _Sweep(key, hydra_context, task_function)
    return _current


def _composed(sweep: _Sweep, job: PatchedJob) -> DictConfig:
    (ref,) = job.base
    if ref.hex() not in sweep.bases:
        sweep.bases[ref.hex()] = hydra_private.pickled(ray.get(ref))
    config = patched(pickle.loads(sweep.bases[ref.hex()]), job.patch)
    return job_config(config, job.idx, job.hardware)


def stage(refs: list[ObjectRef]) -> None:
    """Run with no CPUs on a node: fetches ``refs`` (nested, so Ray leaves them to this
    call) into the node's object store."""
    ray.get(refs)


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

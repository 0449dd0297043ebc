"""Runs a Hydra sweep's jobs as Ray tasks: the core behind ``hydra/launcher=rnnsweep_ray``.

Compose, submit, gather. Unlike the upstream Ray launcher, each trial asks for the
resources of its own composed ``hardware`` config, a finished identical trial measured
in the same environment is reused, and one failed or killed trial never takes the others
down. What happens to each trial is told to the sweep's sinks (the MLflow store, the
terminal); this module makes no MLflow call and prints nothing itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rnnsweep.record import FAILED, TrialRecord, config_hash, flatten
from rnnsweep.sweep import interrupts, objective, worker
from rnnsweep.sweep.cluster import LaunchError, ray_session
from rnnsweep.sweep.composer import Composer
from rnnsweep.sweep.context import SweepContext
from rnnsweep.sweep.interrupts import Interrupted
from rnnsweep.sweep.job import SweepTask, trial_name, trial_names
from rnnsweep.sweep.resources import (
    InfeasibleRequest,
    Node,
    Request,
    check_feasible,
    gpu_tags,
    plan,
)
from rnnsweep.sweep.sink import TrialInfo
from rnnsweep.tracking import CONFIG_HASH_TAG, FINGERPRINT_TAG


@dataclass
class Job:
    idx: int
    overrides: list[str]
    config: DictConfig
    name: str
    request: Request | None = None
    retries: int = 0
    ref: Any = None  # the trial's streaming task: it yields its start, then its result
    state: str = "pending"  # pending | running | done | failed | reused | killed
    info: dict[str, Any] = field(default_factory=dict)
    result: JobReturn | None = None


def launch(launcher, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    context = getattr(launcher.task_function, "context", None)
    if context is not None:  # the CLI's: it opens and closes the sweep around Hydra
        return _launch(launcher, context, job_overrides, initial_job_idx)
    # Hydra's launcher API, without the CLI: this launch is the whole sweep.
    with SweepContext.for_sweep(launcher.config) as context:
        context.open()
        return _launch(launcher, context, job_overrides, initial_job_idx)


def _launch(launcher, context: SweepContext, job_overrides: Sequence[Sequence[str]],
            initial_job_idx: int) -> list[JobReturn]:
    config = launcher.config
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    composer = Composer(launcher.hydra_context.config_loader, config)
    jobs = [_compose(composer, initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
    for job, name in zip(jobs, trial_names([j.overrides for j in jobs]), strict=True):
        job.name = name  # by the keys this sweep varies, and only those
    try:
        with ray_session(config, launcher.settings) as nodes:
            _plan(jobs, nodes)
            return _run(launcher, context, jobs, nodes)
    except (LaunchError, InfeasibleRequest) as exc:
        print(f"rnnsweep: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _compose(composer: Composer, idx: int, overrides: list[str]) -> Job:
    config = composer.compose(overrides)
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
        # Resolved here, once: a worker resolving it again could name another directory.
        config.hydra.sweep.dir = str(config.hydra.sweep.dir)
    return Job(idx, overrides, config, trial_name(overrides))


def _plan(jobs: list[Job], nodes: list[Node]) -> None:
    for job in jobs:
        job.request = plan(job.config, nodes)
    check_feasible({j.idx: j.request for j in jobs}, nodes, {j.idx: j.name for j in jobs})
    for job in jobs:
        if OmegaConf.select(job.config, "hardware") is not None:
            # The trial sizes its threads from this, and its params show what it was given.
            with open_dict(job.config):
                job.config.hardware.device = job.request.device
                job.config.hardware.num_cpus = job.request.num_cpus
                job.config.hardware.num_gpus = job.request.num_gpus
                job.config.hardware.exclusive = job.request.exclusive


def _run(launcher, context: SweepContext, jobs: list[Job], nodes: list[Node]
         ) -> list[JobReturn]:
    sinks = context.sinks
    # Flattened once per trial: its hash decides resume, and the params go on its run.
    params = {job.idx: _params(job.config) for job in jobs} if context.records else {}
    digests = {idx: config_hash(p) for idx, p in params.items()}
    reusable = _reusable(launcher.config, context, jobs, digests, nodes)
    for job in (job for job in jobs if job.idx in reusable):
        job.state = "reused"
        job.result = JobReturn(overrides=job.overrides, cfg=job.config,
                               status=JobStatus.COMPLETED)
        sinks.reused(job.idx, reusable[job.idx])
        # The sweeper gets the reused trial's number, as if it had run again.
        job.result.return_value = objective.value_of_run(context.tracker, reusable[job.idx],
                                                         job.config)
    to_run = [job for job in jobs if job.state == "pending"]
    _submit(launcher, to_run)
    sinks.submitted([TrialInfo(job.idx, job.name, tuple(job.overrides), params.get(job.idx, {}),
                               _submission_tags(job, digests)) for job in to_run])
    try:
        _collect(context, to_run, nodes, launcher.settings.poll_s)
    except Interrupted as exc:
        _cancel(context, to_run, f"interrupted ({exc.name})")
        raise
    return [job.result for job in jobs]


def _reusable(config: DictConfig, context: SweepContext, jobs: list[Job],
              digests: dict[int, str], nodes: list[Node]) -> dict[int, str]:
    """Trials an identical finished trial stands for: same config, and measured in the
    environment this cluster would measure it in (asked of the nodes only when some
    config matches). A cluster whose nodes differ reruns everything."""
    if not context.records or OmegaConf.select(config, "ray.rerun", default=False):
        return {}
    finished = context.tracker.finished_configs()
    known = {digest for digest, _ in finished}
    if not any(d in known for d in digests.values()):
        return {}
    fingerprints = _node_fingerprints(nodes)
    if len(fingerprints) != 1:
        return {}
    (env,) = fingerprints
    return {job.idx: finished[(digests[job.idx], env)][0] for job in jobs
            if (digests[job.idx], env) in finished}


def _node_fingerprints(nodes: list[Node]) -> set[str]:
    probe = ray.remote(num_cpus=0)(worker.node_fingerprint)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
            .remote() for n in nodes]
    return set(ray.get(refs))


def _submit(launcher, jobs: list[Job]) -> None:
    execute = ray.remote(worker.execute)
    task = launcher.task_function
    # Shared by every trial: serialised once into Ray's object store, not once per trial.
    context_ref = ray.put(launcher.hydra_context)
    state_ref = ray.put(Singleton.get_state())
    task_ref = ray.put(task.for_workers() if isinstance(task, SweepTask) else task)
    for job in jobs:
        job.retries = int(OmegaConf.select(job.config, "ray.max_retries", default=2))
        job.ref = execute.options(
            num_returns="streaming", num_cpus=job.request.num_cpus,
            num_gpus=job.request.num_gpus, max_retries=job.retries, retry_exceptions=False,
            name=f"rnnsweep-trial-{job.idx}",
        ).remote(context_ref, task_ref, job.config, state_ref, os.getcwd())


def _submission_tags(job: Job, digests: dict[int, str]) -> dict[str, str]:
    tags = {"rnnsweep.ray.request": job.request.describe()}
    if job.idx in digests:
        tags[CONFIG_HASH_TAG] = digests[job.idx]
    return tags


def _collect(context: SweepContext, jobs: list[Job], nodes: list[Node], poll_s: float) -> None:
    pending = {job.ref: job for job in jobs}
    while pending:
        try:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
            if ready:  # and whatever else is ready by now, in one call
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        except Exception as exc:
            # Ray checks for signals while it waits; our handler's raise comes back
            # wrapped in a SystemError.
            raise (interrupts.as_interrupt(exc)) from None
        # Starts before finishes: a trial that finishes in the same batch as a neighbour's
        # start still counts that neighbour (its GPU co-tenant) among those beside it.
        for ref in sorted(ready, key=lambda r: pending[r].state != "pending"):
            job = pending[ref]
            if _advance(job, context, jobs, nodes):
                del pending[ref]


def _advance(job: Job, context: SweepContext, jobs: list[Job], nodes: list[Node]) -> bool:
    """Takes the trial's next message; True when the trial is over."""
    try:
        item, info = ray.get(next(job.ref))
    except StopIteration:
        item, info = None, {}
    except ray.exceptions.RayError as exc:
        # The worker died (SIGKILL, OOM, node loss) and Ray's retries ran out.
        reason = f"{type(exc).__name__} after {job.retries} retries: {str(exc).splitlines()[0]}"
        job.info["finished"] = time.time()
        _finish(job, context, jobs, nodes, _failed_return(job, reason, context.records))
        return True
    if item == worker.STARTED:
        job.state, job.info = "running", info
        context.sinks.started(job.idx)
        return False
    job.info = info
    _finish(job, context, jobs, nodes, item or _failed_return(job, "no result", context.records))
    return True


def _finish(job: Job, context: SweepContext, jobs: list[Job], nodes: list[Node],
            ret: JobReturn) -> None:
    job.result = ret
    record = ret._return_value
    if not isinstance(record, TrialRecord):
        job.state = "done" if ret.status == JobStatus.COMPLETED else "failed"
        if context.records and ret.status != JobStatus.COMPLETED:
            # The task itself raised: the trial failed, and its run says why.
            failed = _failed_return(job, f"{type(record).__name__}: {record}", True)
            job.result, record = failed, failed._return_value
        else:
            return
    job.state = "failed" if record.outcome == FAILED else "done"
    # The worker's copy of the job's Hydra config, a few hundred kB of objects per trial,
    # would pile up on the driver over a long sweep; nothing downstream of an rnnsweep
    # trial reads it (the record and the driver's own config say everything).
    ret.hydra_cfg = None
    job.info["node_ip"] = next((n.address for n in nodes if n.node_id == job.info.get("node_id")),
                               "?")
    record.tags.update(_placement_tags(job, jobs))
    if job.info.get("fingerprint"):
        record.tags[FINGERPRINT_TAG] = job.info["fingerprint"]
    context.sinks.finished(job.idx, record)
    # The record is with the sinks; a sweeper gets the one number it optimises.
    job.result.return_value = objective.value(job.config, record)


def _failed_return(job: Job, reason: str, as_record: bool) -> JobReturn:
    ret = JobReturn(overrides=job.overrides, cfg=job.config, status=JobStatus.FAILED,
                    _return_value=LaunchError(reason))
    if as_record:
        # A dead worker is this trial's failure, recorded on its run; Hydra's sweeper
        # would abort the whole multirun on a FAILED job.
        record = TrialRecord(params={}, outcome=FAILED, reason=reason)
        record.tags = {"rnnsweep.outcome": FAILED, "rnnsweep.reason": reason[:4000]}
        ret.status, ret._return_value = JobStatus.COMPLETED, record
    return ret


def _placement_tags(job: Job, jobs: list[Job]) -> dict[str, str]:
    begin = job.info.get("started") or 0.0
    end = job.info.get("finished") or time.time()
    beside = 0
    for other in jobs:
        start = other.info.get("started")
        if other is job or start is None:
            continue
        other_end = other.info.get("finished")
        if start < end and (other_end is None or other_end > begin):
            beside += 1
    return {
        "rnnsweep.ray.node_id": str(job.info.get("node_id", "")),
        "rnnsweep.ray.node_ip": str(job.info.get("node_ip", "")),
        "rnnsweep.ray.host": str(job.info.get("host", "")),
        "rnnsweep.ray.resources": job.request.describe() if job.request else "",
        "rnnsweep.ray.exclusive": str(job.request.exclusive if job.request else ""),
        "rnnsweep.ray.trials_beside": str(beside),
        # Wall-clock window on the worker: who overlapped whom, from the runs alone.
        "rnnsweep.ray.started_at": f"{begin:.3f}",
        "rnnsweep.ray.finished_at": f"{end:.3f}",
        **gpu_tags(job.info, _neighbours(job, jobs), end),
    }


def _neighbours(job: Job, jobs: list[Job]) -> list[dict[str, Any]]:
    """What the sweep's other trials told of themselves when they started (node, GPU
    ids, start time; their finish too once they are over), for GPU co-tenancy: gpu_tags
    keeps those on this trial's GPUs while it ran. Only gathered when it holds a GPU."""
    if not job.info.get("gpu_ids"):
        return []
    return [other.info for other in jobs if other is not job and other.info.get("started")]


def _cancel(context: SweepContext, jobs: list[Job], reason: str) -> None:
    for job in jobs:
        if job.state in ("pending", "running"):
            with contextlib.suppress(Exception):  # Ray is shut down right after anyway
                ray.cancel(job.ref, force=True)
            job.state = "killed"
            context.sinks.cancelled(job.idx, reason)


def _params(config: DictConfig) -> dict[str, str]:
    """The trial's params exactly as the trial itself flattens its config (without the
    ``hydra`` node, which is neither copied nor resolved: a per-trial cost at scale)."""
    tree = {}
    for key in config:
        if key == "hydra":
            continue
        value = config[key]
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
        tree[key] = value.name if isinstance(value, Enum) else value
    return flatten(tree)

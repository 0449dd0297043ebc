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
from omegaconf import DictConfig, ListConfig, OmegaConf
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rnnsweep import heap
from rnnsweep.record import CONFIG_HASH_TAG, FAILED, TrialRecord, config_hash, flatten
from rnnsweep.sweep import interrupts, objective, worker
from rnnsweep.sweep.cluster import LaunchError, ray_session
from rnnsweep.sweep.composer import Composer, job_config
from rnnsweep.sweep.context import SweepContext
from rnnsweep.sweep.interrupts import Interrupted
from rnnsweep.sweep.job import SweepTask, trial_names
from rnnsweep.sweep.resources import (
    InfeasibleRequest,
    Node,
    Request,
    check_feasible,
    concurrent_trials,
    gpu_tags,
    plan,
    ran_between,
)
from rnnsweep.sweep.sink import TrialInfo
from rnnsweep.tracking import FINGERPRINT_TAG


@dataclass
class Job:
    idx: int
    overrides: list[str]
    name: str
    # Composed when the job is planned and again when it is submitted, and dropped once
    # Ray holds it: a thousand-trial sweep never keeps a thousand configs (over 100 kB
    # of objects each) in the driver. Kept throughout where nothing is recorded (any
    # Hydra app's jobs), whose returns carry it.
    config: DictConfig | None = None
    request: Request | None = None
    digest: str | None = None
    judged_by: tuple[str, str] = ("", "")  # objective metric and direction
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
    overrides = [list(o) for o in job_overrides]
    # Named by the keys this sweep varies, and only those.
    jobs = [Job(initial_job_idx + i, o, name)
            for i, (o, name) in enumerate(zip(overrides, trial_names(overrides), strict=True))]
    try:
        with ray_session(config, launcher.settings) as nodes:
            infos = _plan(composer, jobs, nodes, context.records)
            return _run(launcher, context, composer, jobs, nodes, infos)
    except (LaunchError, InfeasibleRequest) as exc:
        print(f"rnnsweep: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _compose(composer: Composer, job: Job, hydra: bool = True) -> DictConfig:
    return job_config(composer.compose(job.overrides, hydra), job.idx, _hardware(job.request))


def _hardware(request: Request | None) -> dict[str, Any] | None:
    """What Ray grants the trial, as its ``hardware`` config says it: the trial sizes its
    threads from it, and its params show what it was given. None until it is planned."""
    if request is None:
        return None
    return {"device": request.device, "num_cpus": request.num_cpus,
            "num_gpus": request.num_gpus, "exclusive": request.exclusive}


def _plan(composer: Composer, jobs: list[Job], nodes: list[Node], records: bool
          ) -> dict[int, dict[str, str]]:
    """Each job composed once, one at a time: its resource request, its objective and,
    when the sweep is recorded, its params (returned) and config hash. Every request is
    checked before anything runs."""
    params: dict[int, dict[str, str]] = {}
    for job in jobs:
        # Its hydra node is composed when the job is submitted (where the job shares a
        # composition with others: otherwise it comes whole, and is kept till then).
        config = composer.compose(job.overrides, hydra=not records)
        job.request = plan(config, nodes)
        job.judged_by = objective.settings(config)
        job.retries = int(OmegaConf.select(config, "ray.max_retries", default=2))
        job_config(config, job.idx, _hardware(job.request))  # as the worker will see it
        if records:
            # Flattened once per trial: its hash decides resume, and the params go on its
            # run. Interned: the trials of a sweep share nearly all their keys and values.
            flat = _params(config)
            job.digest = config_hash(flat)
            params[job.idx] = {sys.intern(k): sys.intern(v) for k, v in flat.items()}
        if "hydra" in config:
            job.config = config
    check_feasible({j.idx: j.request for j in jobs}, nodes, {j.idx: j.name for j in jobs})
    return params


def _run(launcher, context: SweepContext, composer: Composer, jobs: list[Job],
         nodes: list[Node], params: dict[int, dict[str, str]]) -> list[JobReturn]:
    sinks = context.sinks
    reusable = _reusable(launcher.config, context, jobs, nodes)
    for job in (job for job in jobs if job.idx in reusable):
        job.state, job.config = "reused", None  # only recorded sweeps reuse
        job.result = JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED)
        sinks.reused(job.idx, reusable[job.idx], TrialInfo(job.idx, job.name, tuple(job.overrides)))
        # The sweeper gets the reused trial's number, as if it had run again.
        job.result.return_value = objective.value_of_run(context.tracker, reusable[job.idx],
                                                         *job.judged_by)
    to_run = [job for job in jobs if job.state == "pending"]
    submitter = _Submitter(launcher, composer, to_run, nodes, context.records)
    # The first trials run while their runs are made (the sinks hear of their start only
    # once every run exists).
    submitter.top_up()
    sinks.submitted([TrialInfo(job.idx, job.name, tuple(job.overrides), params.get(job.idx, {}),
                               _submission_tags(job)) for job in to_run])
    params.clear()  # on their runs now
    try:
        _collect(context, to_run, nodes, launcher.settings.poll_s, submitter)
    except Interrupted as exc:
        _cancel(context, to_run, f"interrupted ({exc.name})")
        raise
    return [job.result for job in jobs]


def _reusable(config: DictConfig, context: SweepContext, jobs: list[Job],
              nodes: list[Node]) -> dict[int, str]:
    """Trials an identical finished trial stands for: same config, and measured in the
    environment this cluster would measure it in (asked of the nodes only when some
    config matches). A cluster whose nodes differ reruns everything."""
    if not context.records or OmegaConf.select(config, "ray.rerun", default=False):
        return {}
    finished = context.tracker.finished_configs()
    known = {digest for digest, _ in finished}
    if not any(job.digest in known for job in jobs):
        return {}
    fingerprints = _node_fingerprints(nodes)
    if len(fingerprints) != 1:
        return {}
    (env,) = fingerprints
    return {job.idx: finished[(job.digest, env)][0] for job in jobs
            if (job.digest, env) in finished}


def _node_fingerprints(nodes: list[Node]) -> set[str]:
    return set(ray.get(_on_each_node(worker.node_fingerprint, nodes)))


def _on_each_node(function, nodes: list[Node], *args) -> list:
    """``function(*args)`` once on every node, holding no CPUs: the refs of its results."""
    remote = ray.remote(num_cpus=0)(function)
    return [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n.node_id, soft=False)).remote(*args) for n in nodes]


class _Submitter:
    """Hands jobs to Ray a few at a time: enough queued to keep every slot busy, each
    composed just before it goes. Ray holds a submitted task's arguments until the task
    ends, so submitting a thousand at once would hold a thousand configs."""

    def __init__(self, launcher, composer: Composer, jobs: list[Job], nodes: list[Node],
                 drop_configs: bool) -> None:
        self.composer, self.drop_configs = composer, drop_configs
        self.queue = list(reversed(jobs))  # popped from the end, in submission order
        self.in_flight: dict[Any, Job] = {}
        self.window = 2 * concurrent_trials([j.request for j in jobs], nodes) + 4
        self.execute = ray.remote(worker.execute)
        task = launcher.task_function
        # Shared by every trial: serialised once into Ray's object store, and fetched by
        # each worker process once (see worker.SweepShared).
        self.shared: worker.SweepShared = (
            ray.put(launcher.hydra_context),
            ray.put(task.for_workers() if isinstance(task, SweepTask) else task),
            ray.put(Singleton.get_state()))
        self.cwd = os.getcwd()
        self.nodes = nodes
        self._stage(*self.shared)
        self.bases: dict[tuple[str, ...], Any] = {}  # shared compositions, in the object store

    def top_up(self) -> None:
        while self.queue and len(self.in_flight) < self.window:
            job = self.queue.pop()
            config = job.config if job.config is not None else self._job(job)
            job.config = None
            # One task name for every trial: Ray's driver keeps about 6.5 KB for each
            # task name it has seen, for good (13 MB more after 2,000 uniquely named
            # tasks; none with one name). The worker's process title names the trial.
            job.ref = self.execute.options(
                num_returns="streaming", num_cpus=job.request.num_cpus,
                num_gpus=job.request.num_gpus, max_retries=job.retries,
                retry_exceptions=False, name=worker.TASK_NAME,
            ).remote(self.shared, config, self.cwd, job.idx)
            if not self.drop_configs:
                job.config = config
            self.in_flight[job.ref] = job

    def _job(self, job: Job) -> DictConfig | worker.PatchedJob:
        """A job that shares a composition goes as its values: the composition itself
        goes to the object store once, and each worker applies the values."""
        patch = self.composer.patch(job.overrides)
        if patch is None:
            return _compose(self.composer, job)
        if patch.key not in self.bases:
            self.bases[patch.key] = ray.put(self.composer.base(patch.key))
            self._stage(self.bases[patch.key])
        return worker.PatchedJob((self.bases[patch.key],), patch, job.idx,
                                 _hardware(job.request))

    def _stage(self, *refs) -> None:
        """Copies shared objects to every node before its trials fetch them: a trial
        that waits in ``ray.get`` for an object from another node lends its CPUs out
        meanwhile, and Ray may start a queued trial on them."""
        if len(self.nodes) > 1:
            try:
                ray.get(_on_each_node(worker.stage, self.nodes, list(refs)))
            except Exception as exc:  # a signal comes back wrapped (see _collect)
                raise interrupts.as_interrupt(exc) from None

    def done(self, ref) -> None:
        # Its stream let go too: Ray keeps a task's spec for retries while it is referenced.
        self.in_flight.pop(ref).ref = None
        self.top_up()


def _submission_tags(job: Job) -> dict[str, str]:
    tags = {"rnnsweep.ray.request": job.request.describe()}
    if job.digest:
        tags[CONFIG_HASH_TAG] = job.digest
    return tags


def _collect(context: SweepContext, jobs: list[Job], nodes: list[Node], poll_s: float,
             submitter: _Submitter) -> None:
    pending = submitter.in_flight
    over = 0  # trials ended here (a sweep without records counts none elsewhere)
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
                submitter.done(ref)
                over += 1
                if over % heap.TRIM_EVERY == 0:
                    heap.give_back()


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
    job.info["node_ip"] = next((n.address for n in nodes if n.node_id == job.info.get("node_id")),
                               "?")
    record.tags.update(_placement_tags(job, jobs))
    if job.info.get("fingerprint"):
        record.tags[FINGERPRINT_TAG] = job.info["fingerprint"]
    context.sinks.finished(job.idx, record)
    # The record is with the sinks; a sweeper gets the one number it optimises. What the
    # driver keeps of a finished trial is that number and when and where it ran.
    job.result = JobReturn(overrides=job.overrides, cfg=job.config, status=job.result.status,
                           working_dir=ret.working_dir, task_name=ret.task_name)
    job.result.return_value = objective.score(record, *job.judged_by)
    job.info = {k: job.info[k] for k in _KEPT_INFO if k in job.info}
    if "node_id" in job.info:  # one copy per node, not per trial
        job.info["node_id"] = sys.intern(job.info["node_id"])


# What a finished trial's neighbours still read of it (its overlap and GPU co-tenancy).
_KEPT_INFO = ("started", "finished", "node_id", "gpu_ids")


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
    beside = sum(other is not job and ran_between(other.info, begin, end) for other in jobs)
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

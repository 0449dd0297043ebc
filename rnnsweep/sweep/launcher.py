"""Runs a Hydra sweep's jobs as Ray tasks: the core behind ``hydra/launcher=rnnsweep_ray``.

Compose, submit, gather. Unlike the upstream Ray launcher, each trial asks for the
resources of its own composed ``hardware`` config, a finished identical trial measured
in the same environment is reused, and one failed or killed trial never takes the others
down. What happens to each trial is told to the sweep's sinks (the MLflow store, the
terminal), which write the runs and the lines. The launcher itself writes nothing to the
store: it reads it through the context's tracker (resume's finished trials, a reused
trial's value, a relayed trial's last checkpoint). It prints two things itself: the one
line of a launch refused before any trial starts, and a line for each trial whose earlier
run had noisy timings and so runs again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from omegaconf import DictConfig, ListConfig, OmegaConf
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rnnsweep import contract, heap
from rnnsweep.adapters import hydra_private
from rnnsweep.contract import (
    CONFIG_HASH_TAG,
    FAILED,
    FINGERPRINT_TAG,
    OUTCOME_TAG,
    REASON_TAG,
    STOPPED,
    TIMED_OUT,
    TrialState,
    to_tag,
)
from rnnsweep.record import TrialRecord, config_hash, flatten
from rnnsweep.sweep import interrupts, objective, stopping, worker
from rnnsweep.sweep.cluster import LaunchError, out_of_memory, ray_session
from rnnsweep.sweep.composer import Composer, job_config
from rnnsweep.sweep.context import SweepContext
from rnnsweep.sweep.interrupts import Interrupted
from rnnsweep.sweep.job import STOP_GRACE_S, SweepTask
from rnnsweep.sweep.naming import trial_names
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
from rnnsweep.text import first_line

if TYPE_CHECKING:
    from rnnsweep.tracking import Tracker

log = logging.getLogger(__name__)


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
    retries: int = 0  # ray.max_retries: new attempts after its worker died
    attempt: int = 0
    steps: int | None = None
    timeout_s: float | None = None  # trial_timeout_s
    ref: Any = None  # the trial's streaming task: its start, live values, its result
    state: TrialState = TrialState.PENDING
    info: dict[str, Any] = field(default_factory=dict)
    result: JobReturn | None = None
    running_since: float | None = None  # the driver's clock, at its latest start
    interval_s: float = 3.0  # tracking.live_interval_s: how often its worker reports
    # A stop asked of it (outcome, reason, when): past STOP_GRACE_S it is ended by force.
    stop: tuple[str, str, float] | None = None
    last: dict[str, float] = field(default_factory=dict)  # its latest live values
    # checkpoint.store=artifacts: whether it relays its saves, and its latest (an object
    # ref), which a retry or a rerun resumes from.
    relays: bool = False
    saved: Any = None

    def planned(self) -> Request:
        """Its resource request: a job is planned before it is submitted or tagged."""
        if self.request is None:
            raise RuntimeError(f"trial {self.name} was not planned")
        return self.request


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
        job.steps = OmegaConf.select(config, "steps", default=None)
        job.timeout_s = OmegaConf.select(config, "trial_timeout_s", default=None)
        job.relays = bool(
            OmegaConf.select(config, "checkpoint.store", default="dir") == "artifacts"
            and (OmegaConf.select(config, "checkpoint.every_s")
                 or OmegaConf.select(config, "checkpoint.every_steps")))
        job.interval_s = float(OmegaConf.select(config, "tracking.live_interval_s",
                                                default=3.0) or 3.0)
        job_config(config, job.idx, _hardware(job.request))  # as the worker will see it
        if records:
            # Flattened once per trial: its hash decides resume, and the params go on its
            # run. Interned: the trials of a sweep share nearly all their keys and values.
            flat = _params(config)
            job.digest = config_hash(flat)
            params[job.idx] = {sys.intern(k): sys.intern(v) for k, v in flat.items()}
        if "hydra" in config:
            job.config = config
    check_feasible({j.idx: j.planned() for j in jobs}, nodes, {j.idx: j.name for j in jobs})
    return params


def _run(launcher, context: SweepContext, composer: Composer, jobs: list[Job],
         nodes: list[Node], params: dict[int, dict[str, str]]) -> list[JobReturn]:
    sinks, tracker = context.sinks, context.tracker
    if tracker is not None:  # only recorded sweeps reuse
        _reuse(launcher.config, tracker, context, jobs, nodes)
    to_run = [job for job in jobs if job.state == TrialState.PENDING]
    watch = _Watch.for_sweep(launcher, to_run, context.started_at)
    for job in to_run:
        if job.relays and job.digest and tracker is not None:
            # A trial whose earlier run (a sweep whose driver died) left a checkpoint on
            # its run goes on from there.
            try:
                found = tracker.latest_checkpoint(job.digest)
            except Exception as exc:  # noqa: BLE001 - it starts from step 0 instead
                log.warning("no checkpoint could be read from the store (%s)",
                            first_line(str(exc)))
                found = None
            if found is not None:
                job.saved = ray.put(found)
    order = to_run
    if watch.stopper is not None and getattr(launcher, "stopper", None) is None:
        # A stopper judges trials by the ones that got there before them: a grid walked
        # in order (learning rates rising, say) hands each trial only worse predecessors.
        # A fixed shuffle makes the first arrivals a fair sample, as the random search
        # that successive halving was made for; results and records keep job order.
        order = random.Random(0).sample(to_run, len(to_run))
    submitter = _Submitter(launcher, composer, order, nodes, context.records, watch.needs_control)
    extra_tags = getattr(launcher, "job_tags", None) or {}
    sinks.submitted([TrialInfo(job.idx, job.name, tuple(job.overrides), params.get(job.idx, {}),
                               {**_submission_tags(job), **extra_tags.get(job.idx, {})})
                     for job in to_run])
    params.clear()  # the sinks hold them till each trial's run is made
    submitter.top_up()
    try:
        _collect(context, to_run, nodes, launcher.settings.poll_s, submitter, watch)
    except Interrupted as exc:
        _cancel(context, to_run, exc.reason)
        raise
    return [_result(job) for job in jobs]


def _reuse(config: DictConfig, tracker: Tracker, context: SweepContext, jobs: list[Job],
           nodes: list[Node]) -> None:
    reusable = _reusable(config, tracker, jobs, nodes)
    for job in (job for job in jobs if job.idx in reusable):
        job.state, job.config = TrialState.REUSED, None
        job.result = JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED)
        context.sinks.reused(job.idx, reusable[job.idx],
                             TrialInfo(job.idx, job.name, tuple(job.overrides)))
        # The sweeper gets the reused trial's number, as if it had run again.
        job.result.return_value = objective.value_of_run(tracker, reusable[job.idx],
                                                         *job.judged_by)


def _result(job: Job) -> JobReturn:
    if job.result is None:  # every trial ends with one: run, reused, failed or cancelled
        raise RuntimeError(f"trial {job.name} ended without a result")
    return job.result


class _Watch:
    """What can end a running trial from the driver: the sweep's stopper (the launcher's
    ``stopper`` setting, or the one a sweeper installed, judging ``objective.metric``'s
    live values), each trial's ``trial_timeout_s`` and the sweep's ``sweep_timeout_s``."""

    def __init__(self, stopper: stopping.Stopper | None, sweep_deadline: float | None,
                 sweep_timeout_s: float | None, timed: bool) -> None:
        self.stopper, self.sweep_deadline = stopper, sweep_deadline
        self.sweep_timeout_s = sweep_timeout_s
        # A stop is asked of the trial's worker through the control actor: only sweeps
        # that can stop a trial make one.
        self.needs_control = stopper is not None or timed

    @classmethod
    def for_sweep(cls, launcher, jobs: list[Job], started_at: float) -> _Watch:
        settings = launcher.settings
        stopper = getattr(launcher, "stopper", None)
        if stopper is None and jobs and getattr(settings, "stopper", "none") != "none":
            # One for the whole sweep: a sweeper's later batches are judged against the
            # earlier ones.
            stopper = getattr(launcher, "_sweep_stopper", None)
            if stopper is None:
                metric, direction = jobs[0].judged_by
                stopper = launcher._sweep_stopper = stopping.make(
                    settings.stopper, direction, max(j.steps or 0 for j in jobs),
                    settings.grace_period, settings.reduction_factor, settings.min_trials)
        limit = OmegaConf.select(launcher.config, "sweep_timeout_s", default=None)
        # From the sweep's start, not this launch's: a sweeper that launches batch after
        # batch (Optuna) is held to one limit for them all.
        deadline = started_at + float(limit) if limit else None
        return cls(stopper, deadline, limit, any(j.timeout_s for j in jobs))

    def live(self, job: Job, rows: list) -> tuple[str, str] | None:
        """A trial's new values: a stop for it, or None."""
        if self.stopper is None:
            return None
        name = stopping.live_name(job.judged_by[0])
        for step, values in rows:
            if name in values:
                reason = self.stopper.report(job.idx, step, float(values[name]))
                if reason:
                    return STOPPED, reason
        return None

    def overdue(self, job: Job, now: float) -> tuple[str, str] | None:
        if job.timeout_s and job.running_since is not None and \
                now - job.running_since > job.timeout_s:
            return TIMED_OUT, (f"trial_timeout_s={job.timeout_s:g}: still running after "
                               f"{now - job.running_since:.1f} s")
        return None

    def sweep_over(self) -> bool:
        return self.sweep_deadline is not None and time.time() >= self.sweep_deadline

    def finished(self, job: Job) -> None:
        if self.stopper is not None:
            self.stopper.finished(job.idx)


def _reusable(config: DictConfig, tracker: Tracker, jobs: list[Job],
              nodes: list[Node]) -> dict[int, str]:
    """Trials an identical finished trial stands for: same config, and measured in the
    environment this cluster would measure it in (asked of the nodes only when some
    config matches). A cluster whose nodes differ reruns everything."""
    if OmegaConf.select(config, "ray.rerun", default=False):
        return {}
    try:
        finished = tracker.finished_configs()
    except Exception as exc:  # noqa: BLE001 - a store briefly unavailable: rerun, not fail
        log.warning("earlier results could not be read from the store (%s): every trial "
                    "runs", first_line(str(exc)))
        return {}
    noisy = getattr(tracker, "noisy_finished", {})  # filled by finished_configs
    known = {digest for digest, _ in finished} | {digest for digest, _ in noisy}
    if not any(job.digest in known for job in jobs):
        return {}
    fingerprints = _node_fingerprints(nodes)
    if len(fingerprints) != 1:
        return {}
    (env,) = fingerprints
    for job in jobs:
        if (job.digest, env) in noisy and (job.digest, env) not in finished:
            print(f"rnnsweep: trial {job.name}: its earlier run {noisy[(job.digest, env)][0]} "
                  "had noisy timings; running it again rather than reusing it", flush=True)
    return {job.idx: finished[(job.digest, env)][0] for job in jobs
            if job.digest is not None and (job.digest, env) in finished}


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
                 drop_configs: bool, control: bool = False) -> None:
        self.composer, self.drop_configs = composer, drop_configs
        self.queue = list(reversed(jobs))  # popped from the end, in submission order
        self.in_flight: dict[Any, Job] = {}
        self.window = 2 * concurrent_trials([j.planned() for j in jobs], nodes) + 4
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
        # ray.remote(**options) is typed to hand the class back, not its actor class.
        self.control = worker.Control.remote() if control else None  # type: ignore[attr-defined]
        if self.control is not None:
            # Up before the first trial starts: a trial that asks while the actor's
            # process is still starting waits, and a short one would end unstoppable.
            ray.get(self.control.poll.remote(-1))

    def top_up(self) -> None:
        while self.queue and len(self.in_flight) < self.window:
            job = self.queue.pop()
            config = job.config if job.config is not None else self._job(job)
            job.config = None
            self._submit(job, config)

    def _submit(self, job: Job, config) -> None:
        # One task name for every trial: Ray's driver keeps about 6.5 KB for each
        # task name it has seen, for good (13 MB more after 2,000 uniquely named
        # tasks; none with one name). The worker's process title names the trial.
        # Ray retries nothing itself: a trial whose worker died is submitted again
        # here, as its next attempt, so that its run can say so and it can go on from
        # its checkpoint (Ray would replay its stream).
        request = job.planned()
        job.ref = self.execute.options(
            num_returns="streaming", num_cpus=request.num_cpus,
            num_gpus=request.num_gpus, max_retries=0,
            retry_exceptions=False, name=worker.TASK_NAME,
        ).remote(self.shared, config, self.cwd, job.idx, job.attempt, self.control,
                 # Nested in a tuple: Ray leaves the ref for the worker to fetch.
                 (job.digest, (job.saved,)) if job.saved is not None else None)
        if not self.drop_configs:
            job.config = config
        self.in_flight[job.ref] = job

    def retry(self, ref) -> None:
        """The trial's worker died: its next attempt, composed again."""
        job = self.in_flight.pop(ref)
        job.attempt += 1
        job.state, job.running_since, job.stop = TrialState.PENDING, None, None
        self._submit(job, job.config if job.config is not None else self._job(job))

    def stop(self, job: Job, outcome: str, reason: str) -> None:
        """Asks the trial to end (its worker asks the control actor every live interval)."""
        if job.stop is not None:
            return
        job.stop = (outcome, reason, time.monotonic())
        if self.control is not None:
            self.control.stop.remote(job.idx, outcome, reason)

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
    tags = {contract.RAY_REQUEST_TAG: job.planned().describe()}
    if job.digest:
        tags[CONFIG_HASH_TAG] = job.digest
    return tags


def _collect(context: SweepContext, jobs: list[Job], nodes: list[Node], poll_s: float,
             submitter: _Submitter, watch: _Watch) -> None:
    pending = submitter.in_flight
    over = 0  # trials ended here (a sweep without records counts none elsewhere)
    while pending:
        interrupts.check()  # a stop whose raise something caught on its way out
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
        for ref in sorted(ready, key=lambda r: pending[r].state != TrialState.PENDING):
            job = pending[ref]
            step = _advance(job, context, jobs, nodes, submitter, watch)
            if step == _RETRIED:
                submitter.retry(ref)
            elif step == _OVER:
                watch.finished(job)
                submitter.done(ref)
                over += 1
                if over % heap.TRIM_EVERY == 0:
                    heap.give_back()
        over += _enforce(context, jobs, nodes, submitter, watch)


_GOING, _OVER, _RETRIED = "going", "over", "retried"


def _advance(job: Job, context: SweepContext, jobs: list[Job], nodes: list[Node],
             submitter: _Submitter, watch: _Watch) -> str:
    """Takes the trial's next message: whether the trial goes on, is over, or is to be
    tried again (its worker died and it has retries left)."""
    try:
        item, info = ray.get(next(job.ref))
    except StopIteration:
        item, info = None, {}
    except ray.exceptions.RayError as exc:
        # The worker died (SIGKILL, OOM, node loss).
        first = first_line(str(exc))
        if job.attempt < job.retries and job.stop is None:
            return _RETRIED
        reason = f"{type(exc).__name__} after {job.attempt} retries: {first}"
        killed = out_of_memory(exc)
        if killed is not None:
            reason = f"{killed.reason}, after {job.attempt} retries"
        job.info["finished"] = time.time()
        ret = _failed_return(job, reason, context.records)
        value = hydra_private.job_value(ret)
        if killed is not None and killed.worker_gb is not None and \
                isinstance(value, TrialRecord):
            value.metrics["peak_rss_mb"] = killed.worker_gb * 1024
        _finish(job, context, jobs, nodes, ret)
        return _OVER
    if item == worker.STARTED:
        job.state, job.info = TrialState.RUNNING, info
        job.running_since = time.monotonic()
        context.sinks.started(job.idx, info)
        return _GOING
    if item == worker.CHECKPOINT:
        job.saved = ray.put(info)
        context.sinks.checkpoint(job.idx, info)
        return _GOING
    if item == worker.LIVE:
        rows = info["rows"]
        for step, values in rows:  # the latest of each, for a record the driver must write
            job.last.update(values)
            job.last["step"] = step
        context.sinks.live(job.idx, rows, info.get("steps"))
        stop = watch.live(job, rows)
        if stop is not None:
            submitter.stop(job, *stop)
        return _GOING
    job.info = info
    _finish(job, context, jobs, nodes, item or _failed_return(job, "no result", context.records))
    return _OVER


def _enforce(context: SweepContext, jobs: list[Job], nodes: list[Node], submitter: _Submitter,
             watch: _Watch) -> int:
    """Time limits, and stops a trial did not obey in time; returns the trials ended."""
    now = time.monotonic()
    if watch.sweep_over():
        reason = f"sweep_timeout_s={watch.sweep_timeout_s:g} reached"
        context.limit_reason = reason
        ended = len(submitter.in_flight) + len(submitter.queue)
        _cancel(context, jobs, reason)
        submitter.in_flight.clear()
        submitter.queue.clear()
        return ended
    ended = 0
    for ref, job in list(submitter.in_flight.items()):
        if job.state != TrialState.RUNNING:
            continue
        overdue = watch.overdue(job, now)
        if overdue is not None:
            submitter.stop(job, *overdue)
        if job.stop is not None and now - job.stop[2] > job.interval_s + STOP_GRACE_S:
            # It did not end when asked (hung in user code, a dead data source): its
            # worker is killed, which frees its device, and its run is ended from what
            # it sent while it ran.
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            outcome, reason, _ = job.stop
            job.info["finished"] = time.time()
            _finish(job, context, jobs, nodes, _ended_return(
                job, outcome, f"{reason}; it did not stop when asked, its worker was killed",
                context.records))
            watch.finished(job)
            submitter.done(ref)
            ended += 1
    return ended


def _finish(job: Job, context: SweepContext, jobs: list[Job], nodes: list[Node],
            ret: JobReturn) -> None:
    job.result = ret
    record = hydra_private.job_value(ret)
    if not isinstance(record, TrialRecord):
        job.state = TrialState.DONE if ret.status == JobStatus.COMPLETED else TrialState.FAILED
        if context.records and ret.status != JobStatus.COMPLETED:
            # The task itself raised: the trial failed, and its run says why.
            failed = _failed_return(job, f"{type(record).__name__}: {record}", True)
            job.result, record = failed, hydra_private.job_value(failed)
        else:
            return
    job.state = TrialState.FAILED if record.outcome == FAILED else TrialState.DONE
    job.info["node_ip"] = next((n.address for n in nodes if n.node_id == job.info.get("node_id")),
                               "?")
    record.tags.update(_placement_tags(job, jobs))
    record.tags[contract.RETRIES_TAG] = to_tag(job.attempt)
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
    return _ended_return(job, FAILED, reason, as_record)


def _ended_return(job: Job, outcome: str, reason: str, as_record: bool) -> JobReturn:
    """A trial that ended without handing back its record (its worker died or was
    killed): the driver's record of it, from the last values it sent."""
    ret = JobReturn(overrides=job.overrides, cfg=job.config, status=JobStatus.FAILED)
    ret.return_value = LaunchError(reason)
    if as_record:
        # A dead worker is this trial's failure, recorded on its run; Hydra's sweeper
        # would abort the whole multirun on a FAILED job.
        record = TrialRecord(params={}, outcome=outcome, reason=reason,
                             finished_at=time.time())
        record.metrics = {_LAST.get(k, k): v for k, v in job.last.items() if k in _LAST}
        record.tags = {OUTCOME_TAG: outcome, REASON_TAG: reason[:4000]}
        if job.last.get("step") is not None:
            record.tags[contract.STOPPED_AT_STEP_TAG] = to_tag(int(job.last["step"]) + 1)
        ret.status, ret.return_value = JobStatus.COMPLETED, record
    return ret


# Summaries a driver-written record takes from a trial's latest live values.
_LAST = {"loss": "final_loss", "best_val_loss": "best_val_loss"}


def _placement_tags(job: Job, jobs: list[Job]) -> dict[str, str]:
    begin = job.info.get("started") or 0.0
    end = job.info.get("finished") or time.time()
    beside = sum(other is not job and ran_between(other.info, begin, end) for other in jobs)
    return {
        contract.RAY_NODE_ID_TAG: str(job.info.get("node_id", "")),
        contract.RAY_NODE_IP_TAG: str(job.info.get("node_ip", "")),
        contract.RAY_HOST_TAG: str(job.info.get("host", "")),
        contract.RAY_RESOURCES_TAG: job.request.describe() if job.request else "",
        contract.RAY_EXCLUSIVE_TAG: to_tag(job.request.exclusive if job.request else None),
        contract.RAY_TRIALS_BESIDE_TAG: to_tag(beside),
        # Wall-clock window on the worker: who overlapped whom, from the runs alone.
        contract.RAY_STARTED_AT_TAG: to_tag(begin, decimals=3),
        contract.RAY_FINISHED_AT_TAG: to_tag(end, decimals=3),
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
        if job.state in (TrialState.PENDING, TrialState.RUNNING):
            if job.ref is not None:
                with contextlib.suppress(Exception):  # Ray is shut down right after anyway
                    ray.cancel(job.ref, force=True)
            job.state = TrialState.KILLED
            # A sweeper reads every job's result: a killed trial is the worst it can be
            # (the sweep goes on to its close, its report and its exit status).
            job.result = JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED)
            job.result.return_value = objective.worst(job.judged_by[1] or "minimize")
            context.sinks.cancelled(job.idx, reason)


def _params(config: DictConfig) -> dict[str, str]:
    """The trial's params exactly as the trial itself flattens its config (without the
    ``hydra`` node, which is neither copied nor resolved: a per-trial cost at scale)."""
    tree: dict[str, Any] = {}
    for key in config:
        if key == "hydra":
            continue
        value = config[key]
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
        # str(key) is how flatten names it: the schema's keys are all names.
        tree[str(key)] = value.name if isinstance(value, Enum) else value
    return flatten(tree)

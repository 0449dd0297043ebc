"""Runs a Hydra sweep's jobs as Ray tasks: the core behind ``hydra/launcher=rnnsweep_ray``.

Unlike the upstream Ray launcher, each trial asks for the resources of its own composed
``hardware`` config, results are written and printed as each trial finishes, and one
failed or killed trial never takes the others down. Trial records travel back through
Ray and the driver writes them to MLflow, so workers need neither the driver's
filesystem nor access to the tracking store.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    setup_globals,
)
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnsweep.record import FAILED, TrialRecord, config_hash, flatten
from rnnsweep.sweep import objective
from rnnsweep.sweep import worker as ray_task
from rnnsweep.sweep.cluster import LaunchError, ray_session
from rnnsweep.sweep.job import summary_line, trial_name
from rnnsweep.sweep.resources import InfeasibleRequest, Node, Request, check_feasible, plan
from rnnsweep.tracking import Tracker, current_parent_run


@dataclass
class Job:
    idx: int
    overrides: list[str]
    config: DictConfig
    name: str
    request: Request | None = None
    run_id: str | None = None
    retries: int = 0
    ref: Any = None
    state: str = "pending"  # pending | running | done | failed | skipped | killed
    info: dict[str, Any] = field(default_factory=dict)
    result: JobReturn | None = None
    summary: str = ""


def launch(launcher, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs = [_compose(launcher, initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
    tracker = _tracker(config)
    parent = current_parent_run()
    try:
        with ray_session(config, launcher.settings) as nodes:
            _plan(jobs, nodes)
            return _run(launcher, jobs, nodes, tracker, parent)
    except (LaunchError, InfeasibleRequest) as exc:
        print(f"rnnsweep: error: {exc}", file=sys.stderr)
        if tracker and parent:
            tracker.fail_run(parent, str(exc))
        raise SystemExit(2) from None


def _compose(launcher, idx: int, overrides: list[str]) -> Job:
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    return Job(idx, overrides, config, trial_name(overrides))


def _tracker(config: DictConfig) -> Tracker | None:
    """Only rnnsweep trials are recorded; any other Hydra app just gets its jobs run."""
    if OmegaConf.select(config, "tracking") is None:
        return None
    return Tracker(config.tracking.uri, config.tracking.experiment)


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


def _run(launcher, jobs: list[Job], nodes: list[Node], tracker: Tracker | None,
         parent: str | None) -> list[JobReturn]:
    config = launcher.config
    finished = ({} if tracker is None or OmegaConf.select(config, "ray.rerun", default=False)
                else tracker.finished_configs())
    progress = ray_task.Progress.remote()
    execute = ray.remote(ray_task.execute)
    # Shared by every trial: serialised once into Ray's object store, not once per trial.
    context = ray.put(launcher.hydra_context)
    state = ray.put(Singleton.get_state())
    print(f"rnnsweep: launching {len(jobs)} trials on Ray ({len(nodes)} node(s), "
          f"{sum(n.cpus for n in nodes):g} CPUs, {sum(n.gpus for n in nodes):g} GPUs)", flush=True)
    # Flattened once per trial: its hash decides resume, and the params go on its run.
    params = {job.idx: _params(job.config) for job in jobs} if tracker else {}
    digests = {idx: config_hash(p) for idx, p in params.items()}
    for job in jobs:
        if digests.get(job.idx) in finished:
            _skip(job, finished[digests[job.idx]])
            job.result.return_value = objective.value_of_run(tracker, finished[digests[job.idx]],
                                                             job.config)
            continue
        job.retries = int(OmegaConf.select(job.config, "ray.max_retries", default=2))
        job.ref = execute.options(
            num_cpus=job.request.num_cpus, num_gpus=job.request.num_gpus,
            max_retries=job.retries, retry_exceptions=False, name=f"rnnsweep-trial-{job.idx}",
        ).remote(context, launcher.task_function, job.config, state, progress, job.idx,
                 os.getcwd())
    # The runs are made once every trial is on its way, so trials never wait on the store.
    for job in jobs:
        if tracker and job.ref is not None:
            tags = {"rnnsweep.config_hash": digests[job.idx],
                    "rnnsweep.ray.request": job.request.describe()}
            job.run_id = tracker.start_run(job.name, tags=tags, parent_run_id=parent)
            # Logged now, so a trial whose worker dies still shows what it was.
            tracker.log(job.run_id, params=params[job.idx])
    # SIGTERM (a scheduler or `kill` stopping the sweep) gets the same orderly end as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _collect(jobs, nodes, progress, tracker, launcher.settings.poll_s)
    except KeyboardInterrupt:
        _cancel(jobs, tracker, parent)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    _print_table(jobs)
    return [job.result for job in jobs]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _collect(jobs: list[Job], nodes: list[Node], progress, tracker: Tracker | None,
             poll_s: float) -> None:
    pending = {job.ref: job for job in jobs if job.ref is not None}
    last_line = ""
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
        started = ray.get(progress.snapshot.remote())
        for job in pending.values():
            if job.idx in started and job.state == "pending":
                job.state = "running"
        for ref in ready:
            job = pending.pop(ref)
            _finish(job, jobs, nodes, started, tracker)
            print(f"  #{job.idx} {job.summary}", flush=True)
        line = _progress_line(jobs)
        if line != last_line:
            print(line, flush=True)
            last_line = line


def _finish(job: Job, jobs: list[Job], nodes: list[Node], started: dict[int, float],
            tracker: Tracker | None) -> None:
    try:
        ret, job.info = ray.get(job.ref)
    except ray.exceptions.RayError as exc:
        # The worker died (SIGKILL, OOM, node loss) and Ray's retries ran out.
        reason = f"{type(exc).__name__} after {job.retries} retries: {str(exc).splitlines()[0]}"
        ret = _failed_return(job, reason, as_record=tracker is not None)
        job.info = {"started": started.get(job.idx), "finished": time.time()}
    job.result = ret
    record = ret._return_value
    if not isinstance(record, TrialRecord):
        job.state = "done" if ret.status == JobStatus.COMPLETED else "failed"
        job.summary = f"[{job.state}] {job.name}"
        if tracker and job.run_id and ret.status != JobStatus.COMPLETED:
            tracker.fail_run(job.run_id, f"{type(record).__name__}: {record}")
        return
    job.state = "failed" if record.outcome == FAILED else "done"
    job.info["node_ip"] = next((n.address for n in nodes if n.node_id == job.info.get("node_id")),
                               "?")
    record.tags.update(_placement_tags(job, jobs, started))
    if tracker and job.run_id:
        tracker.write_record(job.run_id, record)
    # The record is written; a sweeper gets the one number it optimises.
    ret.return_value = objective.value(job.config, record)
    job.summary = f"{summary_line(job.name, record)}  @ {job.info.get('node_ip', '?')}"


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


def _placement_tags(job: Job, jobs: list[Job], started: dict[int, float]) -> dict[str, str]:
    begin = job.info.get("started") or started.get(job.idx) or 0.0
    end = job.info.get("finished") or time.time()
    beside = 0
    for other in jobs:
        if other is job or other.idx not in started:
            continue
        other_end = other.info.get("finished") if other.state in ("done", "failed") else None
        if started[other.idx] < end and (other_end is None or other_end > begin):
            beside += 1
    return {
        "rnnsweep.ray.node_id": str(job.info.get("node_id", "")),
        "rnnsweep.ray.node_ip": str(job.info.get("node_ip", "")),
        "rnnsweep.ray.host": str(job.info.get("host", "")),
        "rnnsweep.ray.resources": job.request.describe() if job.request else "",
        "rnnsweep.ray.exclusive": str(job.request.exclusive if job.request else ""),
        "rnnsweep.ray.trials_beside": str(beside),
    }


def _skip(job: Job, run_id: str) -> None:
    job.state = "skipped"
    job.summary = f"[skipped] {job.name} (identical config finished as run {run_id})"
    job.result = JobReturn(overrides=job.overrides, cfg=job.config, status=JobStatus.COMPLETED)
    print(f"  #{job.idx} {job.summary}", flush=True)


def _cancel(jobs: list[Job], tracker: Tracker | None, parent: str | None) -> None:
    print("rnnsweep: interrupted; cancelling pending and running trials", file=sys.stderr)
    for job in jobs:
        if job.state in ("pending", "running") and job.ref is not None:
            ray.cancel(job.ref, force=True)
            job.state = "killed"
            if tracker and job.run_id:
                tracker.fail_run(job.run_id, "interrupted (SIGINT)", status="KILLED")
    if tracker and parent:
        tracker.fail_run(parent, "interrupted (SIGINT)", status="KILLED")


def _params(config: DictConfig) -> dict[str, str]:
    """The trial's params exactly as the trial itself flattens its config."""
    task_cfg = copy.deepcopy(config)
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    return flatten(OmegaConf.to_container(task_cfg, resolve=True, enum_to_str=True))


def _progress_line(jobs: list[Job]) -> str:
    counts = {s: sum(j.state == s for j in jobs)
              for s in ("done", "running", "pending", "failed", "skipped")}
    return (f"rnnsweep: {counts['done']}/{len(jobs)} done, {counts['running']} running, "
            f"{counts['pending']} pending, {counts['failed']} failed, "
            f"{counts['skipped']} skipped")


def _print_table(jobs: list[Job]) -> None:
    print("rnnsweep: trials")
    for job in jobs:
        print(f"  #{job.idx:<3} {job.state:<8} {job.summary}")

"""Reading a sweep back from MLflow, through ``MlflowClient`` only (never the store's files),
so a report can be rebuilt for any past sweep, from any store or tracking server."""

from __future__ import annotations

import sys

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rnnsweep import redaction
from rnnsweep.config.errors import ConfigError
from rnnsweep.contract import (
    CPU_MODEL_TAG,
    DEVICE_TAG,
    NUM_THREADS_TAG,
    OUTCOME_TAG,
    REASON_TAG,
    REUSED_TAG_PREFIX,
    ROLE_TAG,
    SWEEP_ROLE,
)
from rnnsweep.errors import Refused
from rnnsweep.report.model import Trial
from rnnsweep.store import check_uri
from rnnsweep.tracking import Tracker, resolve_uri


class ReportError(Refused):
    """A one-line, user-facing reason why no report can be built."""


def sweep_trials(tracker: Tracker, parent) -> list[Trial]:
    """The parent's child runs, then the runs it reused from earlier sweeps (marked so)."""
    trials = [to_trial(run) for run in tracker.children(parent.info.run_id)]
    own = {t.run_id for t in trials}
    for key in sorted(parent.data.tags):
        run_id = key.removeprefix(REUSED_TAG_PREFIX)
        if key.startswith(REUSED_TAG_PREFIX) and run_id not in own:
            try:
                run = tracker.client.get_run(run_id)
            except MlflowException:
                continue  # deleted since: the tag alone says it was reused
            trial = to_trial(run)
            trial.reused = True
            trials.append(trial)
    return trials


def to_trial(run) -> Trial:
    tags = run.data.tags
    return Trial(run_id=run.info.run_id, outcome=tags.get(OUTCOME_TAG) or run.info.status,
                 reason=tags.get(REASON_TAG, ""), params=_interned(run.data.params),
                 metrics=_keys_interned(run.data.metrics), device=device_name(tags),
                 tags=_interned(tags), experiment_id=run.info.experiment_id,
                 status=run.info.status)


def _interned(strings: dict[str, str]) -> dict[str, str]:
    """A sweep's trials share nearly all their keys and values: one copy of each for a
    thousand trials, not a thousand."""
    return {sys.intern(k): sys.intern(v) for k, v in strings.items()}


def _keys_interned(metrics: dict[str, float]) -> dict[str, float]:
    """Each run brings its own copy of every metric's name."""
    return {sys.intern(k): v for k, v in metrics.items()}


def device_name(tags: dict[str, str]) -> str:
    name = tags.get(DEVICE_TAG, "")
    if name == "cpu":
        threads = tags.get(NUM_THREADS_TAG)
        return f"CPU {tags.get(CPU_MODEL_TAG, '')}".strip() + (
            f" ({threads} thread{'' if threads == '1' else 's'})" if threads else "")
    return name


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[float, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def locate(uri: str, run_id: str | None, experiment: str | None) -> tuple[Tracker, str]:
    """The tracker for the parent run's experiment, and the parent run id. Nothing is created
    or locked: a mistyped path or name is an error, not a new empty store or experiment."""
    tracker, parents = locate_sweeps(uri, [run_id] if run_id else [], experiment, count=1)
    return tracker, parents[0]


def locate_sweeps(uri: str, run_ids: list[str], experiment: str | None,
                  count: int) -> tuple[Tracker, list[str]]:
    """``run_ids`` when given (all in one experiment), else the ``count`` latest sweep parent
    runs of ``experiment``, oldest first. ``uri`` as the user gave it: its credentials go
    where the client reads them, and a relative SQLite path means the current directory."""
    uri = resolve_uri(redaction.hide_credentials(uri))
    try:
        # The sweep command's checks, for a store that must exist: 5 s at most, one line,
        # and no MLflow tables made in a file that is not a store.
        check_uri(uri, key="--tracking-uri", read_only=True)
    except ConfigError as exc:
        raise ReportError(str(exc)) from None
    client = MlflowClient(tracking_uri=redaction.connection_uri(uri))
    if run_ids:
        names = set()
        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise ReportError(f"no run {run_id!r} in {uri}") from None
            names.add(client.get_experiment(run.info.experiment_id).name)
        if len(names) > 1:
            raise ReportError(f"runs {', '.join(run_ids)} belong to different experiments: "
                              f"{', '.join(sorted(names))}")
        return Tracker(uri, names.pop(), create=False), run_ids
    if not experiment:
        raise ReportError("no sweep named: give its parent run id, or an experiment to read "
                          "the latest sweeps of")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no experiment {experiment!r} in {uri}")
    latest = client.search_runs([found.experiment_id], f"tags.`{ROLE_TAG}` = '{SWEEP_ROLE}'",
                                order_by=["attributes.start_time DESC"], max_results=count)
    if len(latest) < count:
        raise ReportError(f"experiment {experiment!r} has {len(latest)} sweep parent runs, "
                          f"{count} needed")
    return Tracker(uri, experiment, create=False), [run.info.run_id
                                                    for run in reversed(latest)]

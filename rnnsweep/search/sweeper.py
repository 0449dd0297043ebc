"""The sweep loop of ``hydra/sweeper=rnnsweep_optuna``: ask Optuna for ``n_jobs`` trials,
run them on the launcher (Ray) with Optuna's pruner as its stopper, tell Optuna what they
measured, until the study has ``n_trials``.

What a trial tells Optuna: its objective value (COMPLETE); PRUNED when the pruner stopped
it (its intermediate values are in the study); FAIL when it has no finite value (it
failed, was unsupported, or lacked the metric), so a failure never looks like a measured
+inf to the sampler, and Optuna's best value is the parent run's ``best_objective``.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from rnnsweep import contract
from rnnsweep.config.errors import ConfigError
from rnnsweep.redaction import redact
from rnnsweep.search import checks, choices, duplicates, space, storage
from rnnsweep.search.pruning import PrunerStopper
from rnnsweep.sweep import objective
from rnnsweep.text import first_line

log = logging.getLogger(__name__)

TRIAL_NUMBER_TAG = contract.OPTUNA_TRIAL_NUMBER_TAG
STUDY_TAG = contract.OPTUNA_STUDY_TAG
DUPLICATE_TAG_PREFIX = contract.OPTUNA_DUPLICATE_TAG_PREFIX


def sweep(plugin, arguments: list[str]) -> list[Any]:
    import optuna

    config, settings = plugin.config, plugin.settings
    try:
        checks.check(config, arguments)  # the CLI checked already; Hydra's API did not
    except ConfigError as exc:
        _refuse(str(exc))
    parsed = space.parse(checks.search_arguments(config, arguments))
    metric, direction = objective.settings(config)
    directions = [direction, *([settings.second_direction] if settings.second_objective else [])]
    steps = int(OmegaConf.select(config, "steps", default=1) or 1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # rnnsweep says what happens
    try:
        study = optuna.create_study(
            storage=storage.open_storage(settings.storage), study_name=settings.study_name,
            sampler=choices.sampler(settings, parsed), pruner=choices.pruner(settings, steps),
            directions=directions, load_if_exists=True)
    except ValueError as exc:
        _refuse(f"hydra.sweeper.storage={redact(str(settings.storage))}: {exc}")
    if [d.name.lower() for d in study.directions] != directions:
        _refuse(f"hydra.sweeper.study_name={settings.study_name}: the stored study optimises "
                f"{', '.join(d.name.lower() for d in study.directions)}; this sweep "
                f"{', '.join(directions)} (objective.direction); use another study_name")
    run = _Sweep(plugin, study, parsed, metric, steps)
    return run.loop()


class _Sweep:
    def __init__(self, plugin, study, parsed: space.Space, metric: str, steps: int) -> None:
        self.settings, self.launcher = plugin.settings, plugin.launcher
        self.study, self.space, self.metric = study, parsed, metric
        self.context = getattr(self.launcher.task_function, "context", None)
        self.job_idx = 0
        self.counts = {"optuna_trials": 0, "optuna_pruned": 0, "optuna_failed": 0,
                       "optuna_duplicates": 0}
        self.duplicate_tags: dict[str, str] = {}
        self.returns: list[Any] = []
        lost = storage.fail_orphans(study)
        done = self._finished()
        self.to_go = self.settings.n_trials - done
        if self.settings.sampler == "grid":
            self.to_go = min(self.to_go, choices.grid_size(parsed) - done)
        where = redact(str(self.settings.storage)) if self.settings.storage else "memory"
        resumed = f"; resumed with {done} trials done" if done else ""
        failed = f", trials {lost} of a dead driver marked FAIL" if lost else ""
        print(f"rnnsweep: optuna study '{study.study_name}' ({where}): sampler "
              f"{self.settings.sampler}, pruner {self.settings.pruner}{resumed}{failed}; "
              f"{max(self.to_go, 0)} trials to run, {self.settings.n_jobs} at a time", flush=True)

    def _finished(self) -> int:
        """Trials the study counts toward ``n_trials``: all that ended, less those whose
        driver died under them (those are asked again)."""
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state.is_finished() and not t.user_attrs.get(storage.LOST_ATTR))

    def loop(self) -> list[Any]:
        while self.to_go > 0:
            size = min(self.settings.n_jobs, self.to_go)
            self._batch(size)
            self.to_go -= size
            self._record_on_parent()
        self._report()
        return self.returns

    def _batch(self, size: int) -> None:
        asked = []
        for _ in range(size):
            trial = self.study.ask(self.space.distributions)
            overrides = self.space.overrides(trial.params)
            trial.set_user_attr(storage.OVERRIDES_ATTR, list(overrides))
            trial.set_user_attr(storage.DRIVER_ATTR, storage.driver_id())
            if self.context is not None and self.context.parent:
                trial.set_user_attr(storage.SWEEP_ATTR, self.context.parent)
            asked.append((trial, overrides))
        self.counts["optuna_trials"] += size
        batch = duplicates.split(asked, duplicates.finished_trials(self.study))
        told = self._run(batch.run) if batch.run else {}
        for trial, earlier in batch.from_study:
            self._copy(trial, earlier)
        for trial, runner in batch.in_batch:
            self._copy(trial, told[runner.number])

    def _run(self, batch: Sequence[tuple[Any, tuple[str, ...]]]) -> dict[int, Any]:
        first = self.job_idx
        trials = {first + i: trial for i, (trial, _) in enumerate(batch)}
        stopper = PrunerStopper(dict(trials), self.settings.pruner, self.metric)
        self.launcher.stopper = stopper
        self.launcher.job_tags = {idx: {TRIAL_NUMBER_TAG: str(trial.number),
                                        STUDY_TAG: self.study.study_name}
                                  for idx, trial in trials.items()}
        returns = self.launcher.launch([list(o) for _, o in batch], initial_job_idx=first)
        self.job_idx += len(returns)
        self.returns += returns
        if self.context is not None and self.context.recording is not None:
            self.context.recording.flush()  # the runs' ids, and the metrics read below
        told = {}
        for (idx, trial), ret in zip(trials.items(), returns, strict=True):
            run_id = self._run_id(idx)
            if run_id:
                trial.set_user_attr(storage.RUN_ATTR, run_id)
            told[trial.number] = self._tell(trial, idx, ret, stopper, run_id)
        return told

    def _tell(self, trial, idx: int, ret, stopper: PrunerStopper, run_id: str | None):
        from optuna.trial import TrialState

        values = [_number(ret)]
        # Pruned only if it did stop: a trial that ended on its own before the pruner's
        # verdict reached it has its run OK and its value, and Optuna hears the same.
        if idx in stopper.pruned and not math.isfinite(values[0]):
            self.counts["optuna_pruned"] += 1
            return _tell(self.study, trial, state=TrialState.PRUNED)
        if self.settings.second_objective:
            values.append(self._metric_of(run_id, str(self.settings.second_objective)))
        if not all(math.isfinite(v) for v in values):
            self.counts["optuna_failed"] += 1
            return _tell(self.study, trial, state=TrialState.FAIL)
        return _tell(self.study, trial, values=values)

    def _copy(self, trial, earlier) -> None:
        """Tells ``trial`` the outcome of the identical ``earlier`` one (see duplicates)."""
        from optuna.trial import TrialState

        trial.set_user_attr(storage.DUPLICATE_ATTR, earlier.number)
        if earlier.user_attrs.get(storage.RUN_ATTR):
            trial.set_user_attr(storage.RUN_ATTR, earlier.user_attrs[storage.RUN_ATTR])
        self.counts["optuna_duplicates"] += 1
        self.duplicate_tags[f"{DUPLICATE_TAG_PREFIX}{trial.number}"] = str(earlier.number)
        if earlier.state == TrialState.COMPLETE:
            _tell(self.study, trial, values=earlier.values)
            return
        for step, value in sorted(earlier.intermediate_values.items()):
            trial.report(value, step)
        if earlier.state == TrialState.PRUNED:
            self.counts["optuna_pruned"] += 1
        else:
            self.counts["optuna_failed"] += 1
        _tell(self.study, trial, state=earlier.state)

    def _run_id(self, idx: int) -> str | None:
        if self.context is None:
            return None
        recording = self.context.recording
        found = recording.runs.get(idx) if recording is not None else None
        return found or self.context.reused_runs.get(idx)

    def _metric_of(self, run_id: str | None, metric: str) -> float:
        if run_id is None or self.context is None or self.context.tracker is None:
            return math.nan
        try:
            found = self.context.tracker.client.get_run(run_id).data.metrics.get(metric)
        except MlflowException as exc:  # the store failed: the record waits in the journal
            log.warning("%s of run %s could not be read: %s", metric, run_id,
                        first_line(str(exc)))
            return math.nan
        return float(found) if found is not None else math.nan

    def _record_on_parent(self) -> None:
        """The study's counts on the sweep's parent run, after every batch (a driver that
        dies leaves them as of its last batch)."""
        if self.context is None or not self.context.parent:
            return
        tags = {STUDY_TAG: self.study.study_name,
                contract.OPTUNA_STORAGE_TAG: redact(str(self.settings.storage or "memory")),
                contract.OPTUNA_SAMPLER_TAG: self.settings.sampler,
                contract.OPTUNA_PRUNER_TAG: self.settings.pruner, **self.duplicate_tags}
        values = {k: float(v) for k, v in self.counts.items()}
        best = self._best()
        if best is not None:
            values["optuna_best_value"] = best.value
            tags[contract.OPTUNA_BEST_TRIAL_TAG] = contract.to_tag(best.number)
        self.context.tracker.log(self.context.parent, tags=tags)
        self.context.tracker.log_summary(self.context.parent, values)

    def _best(self):
        if len(self.study.directions) > 1:
            return None
        try:
            return self.study.best_trial
        except ValueError:  # no COMPLETE trial yet
            return None

    def _report(self) -> None:
        c = self.counts
        tail = (f"{c['optuna_trials']} trials asked, {c['optuna_pruned']} pruned, "
                f"{c['optuna_failed']} failed, {c['optuna_duplicates']} duplicates told "
                "without running")
        if len(self.study.directions) > 1:
            front = [t.number for t in self.study.best_trials]
            print(f"rnnsweep: optuna: Pareto front: trials {front}; {tail}", flush=True)
            return
        best = self._best()
        if best is None:
            print(f"rnnsweep: optuna: no trial completed; {tail}", flush=True)
            return
        params = " ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"rnnsweep: optuna: best value {best.value:.6g} in trial {best.number} "
              f"({params}); {tail}", flush=True)


def _tell(study, trial, **how):
    """``study.tell``, and the trial as stored. Optuna's grid sampler calls
    ``study.stop()`` once its grid is covered, which outside ``optimize`` raises after the
    trial is stored; the sweep ends on its own count (n_trials is capped at the grid)."""
    try:
        return study.tell(trial, **how)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise
        return study._storage.get_trial(trial._trial_id)


def _number(ret) -> float:
    try:
        return float(ret.return_value)
    except (TypeError, ValueError):  # a job without a record (Hydra's return of a raise)
        return math.nan


def _refuse(message: str) -> None:
    print(f"rnnsweep: error: {message}", file=sys.stderr)
    raise SystemExit(2)

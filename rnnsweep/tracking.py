"""The MLflow edge: experiments, the sweep's parent run, and child runs from records.

All writes go through ``MlflowClient.log_batch`` so a trial's thousands of per-step
values cost a handful of requests, and a store shared by concurrent writers sees few
transactions.
"""

from __future__ import annotations

import getpass
import os
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_USER

from rnnsweep import contract
from rnnsweep.contract import (
    CONFIG_HASH_TAG,
    FINGERPRINT_TAG,
    NOISY_TAG,
    OK,
    OUTCOME_TAG,
    RAY_EXCLUSIVE_TAG,
    REASON_TAG,
    ROLE_TAG,
    SWEEP_ROLE,
    from_tag,
)
from rnnsweep.record import TrialRecord
from rnnsweep.redaction import connection_uri, redact
from rnnsweep.store import resolve_uri

# MLflow's per-request limits for log_batch: of each kind, and in all.
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000
# runs.name is VARCHAR(250): SQLite ignores the length, PostgreSQL and MySQL do not.
MAX_RUN_NAME = 250
SEARCH_PAGE = 25  # runs per search: MLflow holds about 120 kB of objects per run of a page


class Tracker:
    def __init__(self, uri: str, experiment: str, create: bool = True) -> None:
        """``create=False`` for a store that is only read (report, compare): no lock file
        beside it, and a missing experiment is an error, not a new one."""
        resolved = resolve_uri(uri)
        # Against a tracking server MLflow prints "View run ... at: URL" on stdout each time
        # a run ends: a line per trial, through the progress display.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self._artifact_uris: dict[str, str] = {}  # run id -> artifact URI, till written
        self._connection = connection_uri(resolved)
        self.uri = redact(resolved)  # shown and recorded; only the client sees credentials
        # A fresh SQLite store runs its migrations when it is first opened, and two
        # processes doing that at once leave it half-migrated; two creating one
        # experiment, one of them fails. One process at a time opens it (the lock sits
        # beside the database).
        with _store_lock(resolved) if create else nullcontext():
            self.client = MlflowClient(tracking_uri=self._connection)
            self.client.search_experiments(max_results=1)  # opens (and migrates) it now
            found = self.client.get_experiment_by_name(experiment)
            if found is None and not create:
                raise MlflowException(f"no experiment {experiment!r} in {self.uri}")
            self.experiment_id = (found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=_artifact_root(self.uri, experiment)))
        self.experiment = experiment
        self._file = _identity(resolved)
        # Held open while the tracker lives: a deleted file's inode then stays taken, so a
        # new file at the same path is never mistaken for it by its inode number.
        self._held = None if self._file is None else _hold(self._file[0])
        if self._held is not None:
            weakref.finalize(self, os.close, self._held)

    def check_intact(self) -> None:
        """Raises ``StoreLost`` if the store's SQLite file was deleted or replaced since
        it was opened: SQLite goes on writing into the deleted file, and what it takes
        there is lost without an error."""
        if self._file is None:
            return
        gone = self._held is not None and os.fstat(self._held).st_nlink == 0
        if gone or _identity(f"sqlite:///{self._file[0]}") != self._file:
            raise StoreLost("its file was deleted or replaced during the sweep")

    def start_run(self, name: str, tags: dict[str, str] | None = None,
                  parent_run_id: str | None = None, start_time: float | None = None,
                  experiment_id: str | None = None) -> str:
        """``start_time``: when the run's work began (epoch seconds), if not now."""
        name = redact(name)
        if len(name) > MAX_RUN_NAME:  # a long command line: PostgreSQL refuses the run
            name = name[:MAX_RUN_NAME - 1] + "…"
        # MLflow's client leaves the user unset (its fluent API sets it): on a team's
        # server, who launched a sweep is what tells its runs from a colleague's.
        all_tags = {MLFLOW_RUN_NAME: name, MLFLOW_USER: _user(),
                    **{k: redact(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id  # the UI nests runs by this tag
        run = self.client.create_run(
            experiment_id or self.experiment_id, tags=all_tags, run_name=name,
            start_time=None if start_time is None else int(start_time * 1000))
        if run.info.artifact_uri:
            # Kept till the run's artifacts are written: MLflow would otherwise read the
            # whole run back to find where they go (a request of its own on a server, and
            # on SQLite the dearest part of writing a trial).
            self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    def write_record(self, run_id: str, record: TrialRecord, with_params: bool = True,
                     logged: Callable[[str, int], bool] | None = None) -> None:
        """Logs a finished trial's record onto an existing run and ends the run; its params
        are left out where they were logged when the run was made, and its series' steps
        where ``logged(name, step)`` says the run has them already (live metrics)."""
        now = int(time.time() * 1000)
        series = record.step_metrics.keys() | record.sparse_metrics.keys()
        # A summary that is also a series (val_loss: its last value) is that series.
        metrics = [Metric(k, v, now, 0) for k, v in record.metrics.items() if k not in series]
        points = [(name, step, v) for name, values in record.step_metrics.items()
                  for step, v in enumerate(values)]
        points += [(name, step, v) for name, steps in record.sparse_metrics.items()
                   for step, v in steps.items()]
        metrics += [Metric(name, v, now, step) for name, step, v in points
                    if logged is None or not logged(name, step)]
        self.log(run_id, params=record.params if with_params else None, tags=record.tags,
                 metrics=metrics)
        if record.artifacts:
            self.log_artifacts(run_id, record.artifacts)
        self._artifact_uris.pop(run_id, None)
        self.client.set_terminated(
            run_id, record.status,
            end_time=None if record.finished_at is None else int(record.finished_at * 1000))

    def log_steps(self, run_id: str, rows: Iterable[tuple[int, dict[str, float]]],
                  params: dict[str, str] | None = None) -> None:
        """A running trial's per-step values (and ``params``, with its first), as few
        requests as MLflow allows."""
        now = int(time.time() * 1000)
        self.log(run_id, params=params,
                 metrics=[Metric(name, value, now, step) for step, values in rows
                          for name, value in values.items()])

    def log(self, run_id: str, params: dict[str, str] | None = None,
            tags: dict[str, str] | None = None, metrics: Iterable[Metric] = ()) -> None:
        """As few ``log_batch`` requests as MLflow's per-request limits allow (usually
        one): each request is a transaction on a store other sweeps may be writing."""
        # Whatever path a URI took into a value, its credentials are not written.
        params_ = [Param(k, redact(v)) for k, v in (params or {}).items()]
        tags_ = [RunTag(k, redact(v)) for k, v in (tags or {}).items()]
        metrics_ = list(metrics)
        while params_ or tags_ or metrics_:
            batch_params, params_ = params_[:MAX_PARAMS], params_[MAX_PARAMS:]
            batch_tags, tags_ = tags_[:MAX_TAGS], tags_[MAX_TAGS:]
            room = min(MAX_METRICS, MAX_ENTITIES - len(batch_params) - len(batch_tags))
            batch_metrics, metrics_ = metrics_[:room], metrics_[room:]
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params,
                                  tags=batch_tags)

    def log_summary(self, run_id: str, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.log(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])

    def log_artifacts(self, run_id: str, files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory(prefix="rnnsweep-artifacts-") as tmp:
            for rel, content in files.items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_redact_text_file(rel, content))
            known = self._artifact_uris.get(run_id)
            if known:
                get_artifact_repository(known, tracking_uri=self._connection).log_artifacts(tmp)
            else:
                self.client.log_artifacts(run_id, tmp)

    def fail_run(self, run_id: str, reason: str, status: str = "FAILED",
                 outcome: str | None = None) -> None:
        """Ends a run that has no record: ``status`` (FAILED, KILLED), and ``outcome``
        (default: the status) with ``reason`` as its tags."""
        self.log(run_id, tags={OUTCOME_TAG: outcome or status, REASON_TAG: reason[:4000]})
        self._artifact_uris.pop(run_id, None)
        self.client.set_terminated(run_id, status)

    def finished_configs(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(config hash, environment fingerprint) -> (run id, run name) of trials that
        already finished with an OK outcome. Trials recorded without a fingerprint never
        match: nothing says what produced their numbers. Trials that had their device to
        themselves and whose timings were flagged noisy (``rnnsweep.timing.noisy``) are
        left out, so an identical trial is run again rather than reused as if clean; they
        are kept, same keys, in :attr:`noisy_finished` for the launcher to say so. A
        trial packed beside others by design (``hardware.exclusive=false``: training-only
        trials by default) is always flagged, and a rerun would be flagged again: it is
        reused, its noise flag carried on its run and shown by the report."""
        done: dict[tuple[str, str], tuple[str, str]] = {}
        self.noisy_finished: dict[tuple[str, str], tuple[str, str]] = {}
        query = f"attributes.status = 'FINISHED' and tags.`{OUTCOME_TAG}` = '{OK}'"
        for run in self._search(query):
            digest = run.data.tags.get(CONFIG_HASH_TAG)
            env = run.data.tags.get(FINGERPRINT_TAG)
            if digest and env:
                noisy = (from_tag(run.data.tags.get(NOISY_TAG), bool, False)
                         and from_tag(run.data.tags.get(RAY_EXCLUSIVE_TAG), bool, True))
                found = self.noisy_finished if noisy else done
                found.setdefault((digest, env), (run.info.run_id, run.info.run_name or ""))
        return done

    def latest_checkpoint(self, config_hash: str) -> bytes | None:
        """The checkpoint an unfinished run of this trial config left on its run
        (checkpoint.store=artifacts), the newest first; None if there is none."""
        query = (f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}' and "
                 "attributes.status != 'FINISHED' and attributes.status != 'RUNNING'")
        runs = self.client.search_runs([self.experiment_id], query, max_results=5,
                                       order_by=["attributes.start_time DESC"])
        for run in runs:
            with tempfile.TemporaryDirectory(prefix="rnnsweep-resume-") as tmp:
                try:
                    path = self.client.download_artifacts(run.info.run_id,
                                                           contract.CHECKPOINT_ARTIFACT, tmp)
                except Exception:  # noqa: BLE001 - that run saved none: look further
                    continue
                return Path(path).read_bytes()
        return None

    def running_sweeps(self) -> list:
        return list(self._search(
            f"attributes.status = 'RUNNING' and tags.`{ROLE_TAG}` = '{SWEEP_ROLE}'"))

    def children(self, parent_run_id: str) -> Iterator:
        """The parent's child runs, a page at a time: a whole MLflow run, with every
        param, tag and metric as an object, is about 20 kB, and a list of a thousand of
        them left the driver's heap 20 MB larger for good (freed in pieces, it stays
        fragmented). Pages are offsets: a caller that changes the runs reads them first."""
        return self._search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")

    def _search(self, query: str) -> Iterator:
        token = None
        while True:
            # Small pages (SEARCH_PAGE): the store builds every row of a page as objects at
            # once, several times the size of the runs it returns.
            page = self.client.search_runs([self.experiment_id], query, max_results=SEARCH_PAGE,
                                           page_token=token)
            yield from page
            token = page.token
            if not token:
                return


class StoreLost(MlflowException):
    """The store's database file was deleted or replaced while the sweep wrote to it."""


def _identity(uri: str) -> tuple[str, int, int] | None:
    """A SQLite store's file as (path, device, inode); None for other stores."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix):].split("?", 1)[0]
    try:
        found = os.stat(path)
    except OSError:
        return (path, -1, -1)
    return (path, found.st_dev, found.st_ino)


def _hold(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry and no $USER
        return str(os.getuid())


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store sit beside the database file, whatever directory the
    first sweep happened to run from, so the store and its artifacts move together."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None  # a tracking server decides where artifacts go
    return (Path(uri[len(prefix):]).parent / "mlartifacts" / experiment).as_uri()


def _store_lock(uri: str) -> AbstractContextManager:
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return nullcontext()  # a tracking server serialises its own store
    return FileLock(uri[len(prefix):] + ".lock", timeout=300)


def _redact_text_file(name: str, content: bytes) -> bytes:
    """Text artifacts (config.yaml, the report, error.txt) lose any credentials; binary
    ones (plots, exported models) are written as they are."""
    if not name.endswith((".yaml", ".yml", ".md", ".html", ".txt", ".json", ".csv", ".log")):
        return content
    try:
        return redact(content.decode()).encode()
    except UnicodeDecodeError:
        return content

"""The MLflow edge: experiments, the sweep's parent run, and child runs from records.

All writes go through ``MlflowClient.log_batch`` so a trial's thousands of per-step
values cost a handful of requests, and a store shared by concurrent writers sees few
transactions.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from rnnsweep.config.store import resolve_uri
from rnnsweep.record import OK, TrialRecord
from rnnsweep.redaction import connection_uri, redact

# MLflow's per-request limits for log_batch.
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
PARENT_RUN_ENV = "RNNSWEEP_PARENT_RUN_ID"
ROLE_TAG = "rnnsweep.role"


class Tracker:
    def __init__(self, uri: str, experiment: str) -> None:
        resolved = resolve_uri(uri)
        self.uri = redact(resolved)  # shown and recorded; only the client sees credentials
        self.client = MlflowClient(tracking_uri=connection_uri(resolved))
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=_artifact_root(self.uri, experiment)))

    def start_run(self, name: str, tags: dict[str, str] | None = None,
                  parent_run_id: str | None = None) -> str:
        name = redact(name)
        all_tags = {MLFLOW_RUN_NAME: name, **{k: redact(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id  # the UI nests runs by this tag
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    def write_record(self, run_id: str, record: TrialRecord) -> None:
        """Logs a finished trial's record onto an existing run and ends the run."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in record.metrics.items()]
        for name, values in record.step_metrics.items():
            metrics += [Metric(name, v, now, step) for step, v in enumerate(values)]
        self.log(run_id, params=record.params, tags=record.tags, metrics=metrics)
        if record.artifacts:
            self.log_artifacts(run_id, record.artifacts)
        self.client.set_terminated(run_id, record.status)

    def log(self, run_id: str, params: dict[str, str] | None = None,
            tags: dict[str, str] | None = None, metrics: Iterable[Metric] = ()) -> None:
        # Whatever path a URI took into a value, its credentials are not written.
        params_ = [Param(k, redact(v)) for k, v in (params or {}).items()]
        tags_ = [RunTag(k, redact(v)) for k, v in (tags or {}).items()]
        for chunk in _chunks(params_, MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(tags_, MAX_TAGS):
            self.client.log_batch(run_id, tags=chunk)
        for chunk in _chunks(list(metrics), MAX_METRICS):
            self.client.log_batch(run_id, metrics=chunk)

    def log_summary(self, run_id: str, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.log(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])

    def log_artifacts(self, run_id: str, files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory(prefix="rnnsweep-artifacts-") as tmp:
            for rel, content in files.items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_redact_text_file(rel, content))
            self.client.log_artifacts(run_id, tmp)

    def fail_run(self, run_id: str, reason: str, status: str = "FAILED") -> None:
        self.client.set_tag(run_id, "rnnsweep.outcome", status)
        self.client.set_tag(run_id, "rnnsweep.reason", redact(reason)[:4000])
        self.client.set_terminated(run_id, status)

    def finished_configs(self) -> dict[str, str]:
        """config hash -> run id of trials that already finished with an OK outcome."""
        done: dict[str, str] = {}
        query = f"attributes.status = 'FINISHED' and tags.`rnnsweep.outcome` = '{OK}'"
        for run in self._search(query):
            digest = run.data.tags.get("rnnsweep.config_hash")
            if digest:
                done.setdefault(digest, run.info.run_id)
        return done

    def children(self, parent_run_id: str) -> list:
        return list(self._search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"))

    def _search(self, query: str) -> Iterator:
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000,
                                           page_token=token)
            yield from page
            token = page.token
            if not token:
                return


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store sit beside the database file, whatever directory the
    first sweep happened to run from, so the store and its artifacts move together."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None  # a tracking server decides where artifacts go
    return (Path(uri[len(prefix):]).parent / "mlartifacts" / experiment).as_uri()


def _redact_text_file(name: str, content: bytes) -> bytes:
    """Text artifacts (config.yaml, the report, error.txt) lose any credentials; binary
    ones (plots, exported models) are written as they are."""
    if not name.endswith((".yaml", ".yml", ".md", ".html", ".txt", ".json", ".csv", ".log")):
        return content
    try:
        return redact(content.decode()).encode()
    except UnicodeDecodeError:
        return content


def current_parent_run() -> str | None:
    return os.environ.get(PARENT_RUN_ENV) or None


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

"""The MLflow edge on a real SQLite store: batching within MLflow's limits, the store lock."""

from __future__ import annotations

import time

from mlflow.entities import Metric

from rnnsweep import tracking
from rnnsweep.record import TrialRecord
from rnnsweep.tracking import Tracker


def test_log_packs_everything_within_mlflows_limits(mlflow_store):
    tracker = Tracker(mlflow_store.uri, "limits")
    run_id = tracker.start_run("big")
    now = int(time.time() * 1000)
    tracker.log(run_id, params={f"p{i}": str(i) for i in range(250)},
                tags={f"t{i}": str(i) for i in range(150)},
                metrics=[Metric("loss", float(i), now, i) for i in range(2500)])
    run = tracker.client.get_run(run_id)
    assert len(run.data.params) == 250
    assert sum(k.startswith("t") for k in run.data.tags) == 150
    assert len(tracker.client.get_metric_history(run_id, "loss")) == 2500


def test_a_record_written_without_its_params_keeps_those_logged_at_submission(mlflow_store):
    tracker = Tracker(mlflow_store.uri, "records")
    run_id = tracker.start_run("trial")
    tracker.log(run_id, params={"batch": "8"})
    record = TrialRecord(params={"batch": "8"}, metrics={"latency_ms": 1.5},
                         step_metrics={"loss": [1.0, 0.5]})
    tracker.write_record(run_id, record, with_params=False)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"batch": "8"} and run.data.metrics["latency_ms"] == 1.5
    assert [m.value for m in tracker.client.get_metric_history(run_id, "loss")] == [1.0, 0.5]


def test_the_store_lock_sits_beside_the_database(mlflow_store):
    Tracker(mlflow_store.uri, "locked")
    assert mlflow_store.path.with_name(mlflow_store.path.name + ".lock").exists()


def test_a_sweeps_children_are_read_a_page_at_a_time(mlflow_store, monkeypatch):
    # A thousand-trial sweep's close read its runs into one list first: 20 MB of MLflow
    # objects alive at once, and the driver's heap larger by that for good.
    tracker = Tracker(mlflow_store.uri, "paged")
    parent = tracker.start_run("sweep")
    for i in range(5):
        tracker.start_run(f"trial {i}", parent_run_id=parent)
    monkeypatch.setattr(tracking, "SEARCH_PAGE", 2)
    pages = []
    search = tracker.client.search_runs

    def counted(*args, **kwargs):
        page = search(*args, **kwargs)
        pages.append(len(page))
        return page

    monkeypatch.setattr(tracker.client, "search_runs", counted)
    children = tracker.children(parent)
    first = next(children)
    assert first.data.tags["mlflow.parentRunId"] == parent
    assert pages == [2]  # nothing read beyond the first page yet
    assert len([first, *children]) == 5
    assert pages == [2, 2, 1]


# --- stores checked before anything starts (issue 22), and opened only to read -------------


def test_stores_that_lose_everything_or_are_no_file_are_refused(tmp_path):
    import pytest

    from rnnsweep.config.errors import ConfigError
    from rnnsweep.store import check_uri

    for uri, words in (("sqlite://", "in-memory"), ("sqlite:///:memory:", "in-memory"),
                       ("sqlite:////dev/null", "not a regular file"),
                       ("http://127.0.0.1:99999", "Port out of range")):
        with pytest.raises(ConfigError, match=words):
            check_uri(uri)
    assert not (tmp_path / ":memory:").exists()


def test_a_reader_needs_an_mlflow_store_and_leaves_every_file_alone(mlflow_store, tmp_path):
    import pytest

    from rnnsweep.config.errors import ConfigError
    from rnnsweep.store import check_uri

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="not an MLflow store"):
        check_uri(f"sqlite:///{empty}", read_only=True)
    check_uri(f"sqlite:///{empty}")  # the sweep command makes a store of an empty file
    assert empty.read_bytes() == b""
    with pytest.raises(ConfigError, match="no such file"):
        check_uri(f"sqlite:///{tmp_path / 'none.db'}", read_only=True)
    Tracker(mlflow_store.uri, "exists")
    lock = mlflow_store.path.with_name(mlflow_store.path.name + ".lock")
    lock.unlink(missing_ok=True)
    check_uri(mlflow_store.uri, read_only=True)
    reader = Tracker(mlflow_store.uri, "exists", create=False)
    assert reader.experiment_id and not lock.exists()
    with pytest.raises(Exception, match="no experiment 'absent'"):
        Tracker(mlflow_store.uri, "absent", create=False)
    assert mlflow_store.client.get_experiment_by_name("absent") is None


def test_a_long_command_line_fits_mlflows_run_name_column(mlflow_store):
    # runs.name is VARCHAR(250); PostgreSQL refused a sweep's whole command line as its name.
    tracker = Tracker(mlflow_store.uri, "names")
    run = tracker.client.get_run(tracker.start_run("batch=1,2 " * 60))
    assert len(run.info.run_name) == tracking.MAX_RUN_NAME
    assert run.info.run_name.startswith("batch=1,2 batch") and run.info.run_name.endswith("…")
    assert run.data.tags["mlflow.runName"] == run.info.run_name


def test_every_run_says_who_launched_it(mlflow_store):
    """MLflow's client leaves ``mlflow.user`` unset (its fluent API fills it): on a team's
    server the runs would all read ``unknown``."""
    import getpass

    tracker = Tracker(mlflow_store.uri, "rnnsweep")
    parent = tracker.start_run("sweep")
    child = tracker.start_run("trial", parent_run_id=parent)
    for run_id in (parent, child):
        assert tracker.client.get_run(run_id).data.tags["mlflow.user"] == getpass.getuser()


def test_a_deleted_store_file_is_noticed_before_a_write_would_vanish(mlflow_store):
    tracker = Tracker(mlflow_store.uri, "rnnsweep")
    tracker.check_intact()
    mlflow_store.path.unlink()
    try:
        tracker.check_intact()
    except tracking.StoreLost as exc:
        assert "deleted" in str(exc)
    else:
        raise AssertionError("a deleted store file went unnoticed")

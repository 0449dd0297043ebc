"""A store that fails in the middle of a sweep loses no record (issue 22).

Records the store cannot take go to the sweep's journal (``.rnnsweep-journal/`` where the
sweep ran), the command ends with one line naming the store and the cause, its table and
summary agree, and the next command run there writes them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time

import pytest
from conftest import Store, cli_paths, run_cli, start_cli, toy, wait_for
from mlflow.exceptions import MlflowException

from rnnsweep import journal
from rnnsweep.journal import DIRECTORY
from rnnsweep.tracking import Tracker

SWEEP = ["-m", "seed=0,1,2", "steps=40", "workload=train", "hardware.num_cpus=1"]


class _Respelled(Store):
    @property
    def uri(self) -> str:
        return f"sqlite:////{self.path}"  # "//abs/path": the same file to POSIX


def _children(store):
    return [r for r in store.runs() if r.data.tags.get("rnnsweep.role") != "sweep"]


def _parents(store):
    return [r for r in store.runs() if r.data.tags.get("rnnsweep.role") == "sweep"]


def _last_line(out: str) -> str:
    return [line for line in out.splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_a_store_locked_till_the_sweep_ends_keeps_its_records_for_the_next_command(
        mlflow_store, tmp_path):
    proc = start_cli([*toy(), *SWEEP, *cli_paths(mlflow_store, tmp_path)], tmp_path,
                     merge_output=True)
    db = None
    try:
        # Once the trials run, another writer takes the store and holds it to the end.
        wait_for(lambda: len(_children(mlflow_store)) >= 1, 120, "a trial's run")
        db = sqlite3.connect(mlflow_store.path, timeout=60, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        if db is not None:
            db.execute("COMMIT")
            db.close()
    assert proc.returncode == 1, out
    last = _last_line(out)
    assert mlflow_store.uri.replace("sqlite:///", "") in last and "database is locked" in last
    assert "Traceback" not in out and "[SQL:" not in out, out
    # The table and the summary agree: three trials, all OK, none failed.
    assert out.count("| OK") == 3, out
    assert "3/3 trials finished, 0 failed" in out, out
    (journal,) = (tmp_path / DIRECTORY).glob("*.jsonl")
    kinds = [json.loads(line)["kind"] for line in journal.read_text().splitlines()]
    assert kinds[0] == "sweep" and "end" in kinds

    # The next command here, with the store free again, writes them.
    report = run_cli(["--experiment", "rnnsweep", "--tracking-uri",
                      mlflow_store.uri], tmp_path, module="rnnsweep.report")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "wrote" in report.stdout and "earlier sweep" in report.stdout
    assert not journal.exists()
    children = _children(mlflow_store)
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1", "2"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all("final_loss" in r.data.metrics for r in children)
    steps = {r.info.run_id: sorted(m.step for m in mlflow_store.client.get_metric_history(
        r.info.run_id, "loss")) for r in children}
    assert all(s == list(range(40)) for s in steps.values()), steps  # each step once
    (parent,) = _parents(mlflow_store)
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_a_store_deleted_under_a_sweep_is_written_again_by_the_next_command(
        mlflow_store, tmp_path):
    proc = start_cli([*toy(), *SWEEP, *cli_paths(mlflow_store, tmp_path)], tmp_path,
                     merge_output=True)
    try:
        wait_for(lambda: any(r.info.status == "FINISHED" for r in _children(mlflow_store)),
                 180, "a finished trial")
        mlflow_store.path.unlink()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    last = _last_line(out)
    assert "deleted" in last and "mlflow.db" in last, out
    assert "Traceback" not in out, out

    # The next sweep here makes a new store, and first writes the lost sweep into it.
    again = run_cli([*toy(), "-m", "seed=7", "steps=2", "workload=train",
                     *cli_paths(mlflow_store, tmp_path)], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "earlier sweep" in again.stdout
    # This process's MLflow client still holds the deleted file open (MLflow keeps one
    # engine per URI): the new file is read through another spelling of its path.
    mlflow_store = _Respelled(mlflow_store.path)
    parents = {r.info.run_id: r for r in _parents(mlflow_store)}
    assert len(parents) == 2
    lost = [r for r in _children(mlflow_store) if r.data.params.get("seed") in ("0", "1", "2")]
    assert sorted(r.data.params["seed"] for r in lost) == ["0", "1", "2"]
    assert {r.info.status for r in lost} == {"FINISHED"}
    (lost_parent,) = {r.data.tags["mlflow.parentRunId"] for r in lost}
    assert parents[lost_parent].info.status == "FINISHED"
    assert not list((tmp_path / DIRECTORY).glob("*.jsonl"))


@pytest.fixture
def small_disk(tmp_path):
    """A 1.4 MB tmpfs of its own (root only): the store's disk, nearly full from the start."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_under_the_store_loses_no_record(_migrated_store, small_disk, tmp_path):
    store = Store(small_disk / "mlflow.db")
    shutil.copyfile(_migrated_store, store.path)  # about 1.2 MB of the 1.4
    out_dir = tmp_path / "work"
    out_dir.mkdir()
    result = run_cli([*toy(), *SWEEP, *cli_paths(store, out_dir)], out_dir)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    last = _last_line(result.stdout)
    assert str(store.path) in last and ("full" in last or "No space" in last), out
    assert "Traceback" not in out, out
    assert result.stdout.count("| OK") == 3, out
    assert "3/3 trials finished, 0 failed" in result.stdout, out

    # Room again (the disk grown), and the report writes what was kept.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    report = run_cli(["--experiment", "rnnsweep", "--tracking-uri", store.uri], out_dir,
                     module="rnnsweep.report")
    assert report.returncode == 0, report.stdout + report.stderr
    children = _children(store)
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1", "2"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert not list((out_dir / DIRECTORY).glob("*.jsonl"))


def test_a_store_that_failed_is_left_alone_a_while_then_asked_again(mlflow_store, tmp_path,
                                                                     monkeypatch):
    """Each write into a locked SQLite file waits MLflow's 20 s: asked again at once, a
    locked store held the sweep 20 s a record (its writes are the driver's own)."""
    monkeypatch.setattr(journal, "BACKOFF_S", 1.0)
    kept = journal.Journal(Tracker(mlflow_store.uri, "rnnsweep"), {"parent": None},
                           tmp_path / DIRECTORY)
    kept.check_up()  # nothing failed yet
    kept.failed(MlflowException("(sqlite3.OperationalError) database is locked"))
    with pytest.raises(journal.StoreDown, match="database is locked"):
        kept.check_up()
    # A write under way as it failed fails too: the window stays one second.
    kept.failed(MlflowException("(sqlite3.OperationalError) database is locked"))
    time.sleep(1.05)
    kept.check_up()  # a second later, the store is tried again...
    kept.failed(MlflowException("still locked"))
    time.sleep(1.05)
    with pytest.raises(journal.StoreDown):  # ...and after a second failure, left longer
        kept.check_up()
    kept.up()  # a write landed
    kept.check_up()
    assert kept.cause == "(sqlite3.OperationalError) database is locked"

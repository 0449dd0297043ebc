"""Stores that would lose every record, and stores that gave tracebacks instead of one line
(issue 22): each refused up front by the sweep command, and by the report and compare
commands, which only read a store and must never write beside it or into it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BASIC_LAUNCHER, run_cli, toy
from team_server import free_port

pytestmark = pytest.mark.slow  # every test runs the CLI in a subprocess

TRAIN = toy("workload=train", "steps=2", BASIC_LAUNCHER)
# A refusal comes before MLflow is imported, let alone a trial: seconds, even loaded.
REFUSAL_S = 30


def _refused(result: subprocess.CompletedProcess, prog: str = "rnnsweep") -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def _sweep(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli([*TRAIN, *args], cwd=tmp, timeout=120)


# --- the sweep command ---------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_stores_are_refused(tmp_path, uri):
    line = _refused(_sweep(tmp_path, f"tracking.uri={uri}"))
    assert f"tracking.uri={uri}: an in-memory store loses every run" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no ':memory:' file, no mlruns


def test_a_device_is_not_a_store(tmp_path):
    line = _refused(_sweep(tmp_path, "tracking.uri=sqlite:////dev/null"))
    assert "/dev/null is not a regular file" in line


def test_a_port_out_of_range_is_one_line(tmp_path):
    line = _refused(_sweep(tmp_path, "tracking.uri=http://127.0.0.1:99999"))
    assert "tracking.uri=http://127.0.0.1:99999: Port out of range" in line


def test_an_http_server_that_is_not_mlflow_is_named(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["python3", "-c", f"import socket; socket.create_connection("
                              f"('127.0.0.1', {port}), 1)"], capture_output=True).returncode:
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.2)
        (tmp_path / "run").mkdir()
        started = time.monotonic()
        line = _refused(_sweep(tmp_path / "run", f"tracking.uri=http://127.0.0.1:{port}"))
        assert time.monotonic() - started < REFUSAL_S
        assert "answers but is not an MLflow tracking server (HTTP 404" in line
        assert not list((tmp_path / "run").iterdir())
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_databricks_profile_that_does_not_exist_is_one_line(tmp_path):
    env = {"HOME": str(tmp_path), "DATABRICKS_HOST": "", "DATABRICKS_TOKEN": ""}
    (tmp_path / "run").mkdir()
    result = run_cli([*TRAIN, "tracking.uri=databricks://nope"], cwd=tmp_path / "run",
                     timeout=120, extra_env=env)
    line = _refused(result)
    assert "tracking.uri=databricks://nope: no Databricks credentials for profile 'nope'" in line


def test_an_output_dir_nothing_can_be_made_in_is_refused_before_the_store(tmp_path):
    line = _refused(_sweep(tmp_path, "hydra.run.dir=/proc/adv"))
    assert line.startswith("rnnsweep: error: hydra.run.dir=/proc/adv: /proc is not writable")
    assert not (tmp_path / "mlflow.db").exists()


# --- report and compare: readers --------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, list[str]]:
    """A real two-trial sweep's store, run twice (compare needs two sweeps), and the two
    parent run ids, older first."""
    directory = tmp_path_factory.mktemp("swept")
    for _ in range(2):
        done = run_cli(["-m", *toy("workload=train_bench", "steps=2", BASIC_LAUNCHER),
                        "batch=1,2", "ray.rerun=true", f"hydra.sweep.dir={directory / 'multirun'}"],
                       cwd=directory, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnsweep")
    parents = client.search_runs([experiment.experiment_id], "tags.`rnnsweep.role` = 'sweep'",
                                 order_by=["attributes.start_time ASC"])
    (directory / "mlflow.db.lock").unlink(missing_ok=True)  # the sweeps' own, done with
    return directory, [run.info.run_id for run in parents]


def _reader(module: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(list(args), cwd=cwd, timeout=120, module=f"rnnsweep.{module}")


@pytest.mark.parametrize("module", ["report", "compare"])
def test_readers_leave_no_lock_beside_the_store(swept, module):
    directory, parents = swept
    args = ["--run-id", parents[0]] if module == "report" else parents
    before = sorted(p.name for p in directory.iterdir())
    result = _reader(module, directory, *args, "--no-log")
    # compare's 1 is a verdict (a timing significantly slower), not a failure to read.
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
    assert "| batch" in result.stdout or "| trial" in result.stdout
    assert sorted(p.name for p in directory.iterdir()) == before  # no mlflow.db.lock


@pytest.mark.parametrize("module", ["report", "compare"])
def test_readers_refuse_a_file_that_is_not_a_store_and_leave_it_alone(tmp_path, module):
    (tmp_path / "junk.db").write_bytes(b"not a database, the user's own file\n" * 10)
    (tmp_path / "empty.db").write_bytes(b"")
    for name, why in (("junk.db", "is not a SQLite database"),
                      ("empty.db", "is not an MLflow store (no MLflow tables)")):
        before = (tmp_path / name).read_bytes()
        args = ["--tracking-uri", f"sqlite:///{name}", "--experiment", "rnnsweep", "--no-log"]
        line = _refused(_reader(module, tmp_path, *args), f"rnnsweep.{module}")
        assert why in line
        assert (tmp_path / name).read_bytes() == before  # no tables made in it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "junk.db"]


@pytest.mark.parametrize("module", ["report", "compare"])
def test_readers_give_up_on_a_dead_server_at_once(tmp_path, module):
    started = time.monotonic()
    line = _refused(_reader(module, tmp_path, "--tracking-uri", "http://127.0.0.1:1",
                            "--experiment", "rnnsweep"), f"rnnsweep.{module}")
    assert time.monotonic() - started < REFUSAL_S
    assert "the server does not answer (cannot connect to 127.0.0.1:1)" in line


def test_report_out_onto_a_file_is_one_line_and_leaves_it(swept, tmp_path):
    directory, (parent, _) = swept
    (tmp_path / "mine.txt").write_text("keep me\n")
    line = _refused(_reader("report", tmp_path, "--run-id", parent, "--tracking-uri",
                            f"sqlite:///{directory / 'mlflow.db'}", "--no-log", "--out",
                            str(tmp_path / "mine.txt")), "rnnsweep.report")
    assert "is a file, not a directory" in line
    assert (tmp_path / "mine.txt").read_text() == "keep me\n"


def test_compare_a_sweep_with_itself_is_refused(swept, tmp_path):
    directory, (parent, _) = swept
    line = _refused(_reader("compare", tmp_path, parent, parent, "--tracking-uri",
                            f"sqlite:///{directory / 'mlflow.db'}"), "rnnsweep.compare")
    assert "A and B are the same sweep" in line

"""A team's tracking server, for real (issue 21): PostgreSQL, ``mlflow server`` on it with
proxied artifacts, four sweeps writing at once from two working directories, the UI in
a real browser, ``tracking.uri=postgresql://...`` without a server, and the one-line
refusals of a database that is down, refuses the password, or does not exist.

PostgreSQL and the server are started by tests/team_server.py, on 127.0.0.1 only, and
stopped by their PIDs.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import BASIC_LAUNCHER, cli_env, run_cli, toy

pytestmark = pytest.mark.slow

SWEEP = toy("workload=train", "steps=2", BASIC_LAUNCHER, "hardware.num_cpus=1")
SWEEP_TIMEOUT_S = 600
# A refusal's budget under load: the checks themselves take at most 5 s (one connection
# or request with a 5 s timeout); the rest is the CLI's start on a busy 2-core machine.
REFUSAL_S = 15


def _need_postgres() -> None:
    from team_server import postgres_bin

    if postgres_bin() is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("PostgreSQL is missing; CI must install it (apt-get install -y postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    pytest.importorskip("psycopg", reason="pip install 'rnnsweep[postgres]'")


@pytest.fixture(scope="module")
def postgres() -> Iterator:
    _need_postgres()
    from team_server import start_postgres

    server = start_postgres()
    try:
        server.create_database("direct")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory) -> Iterator:
    from team_server import start_mlflow_server

    server = start_mlflow_server(postgres.uri(), tmp_path_factory.mktemp("server"),
                                 cli_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))
    try:
        yield server
    finally:
        server.stop()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def four_sweeps(mlflow_server, tmp_path_factory) -> dict:
    """Four sweeps started at once, two from each of two working directories (two people,
    say), all into one server."""
    people = [tmp_path_factory.mktemp("alice"), tmp_path_factory.mktemp("bob")]
    jobs = [(people[i % 2], i) for i in range(4)]

    def sweep(job):
        cwd, i = job
        return run_cli(["-m", *SWEEP, f"batch={2 * i + 1},{2 * i + 2}",
                        f"tracking.uri={mlflow_server.url}",
                        f"hydra.sweep.dir={cwd / 'multirun' / f'sweep{i}'}"], cwd=cwd,
                       timeout=SWEEP_TIMEOUT_S)

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(sweep, jobs))
    for result in results:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    parents = [re.search(r"parent run ([0-9a-f]{32})", r.stdout + r.stderr).group(1)
               for r in results]
    return {"parents": parents, "people": people, "results": results}


def test_four_sweeps_at_once_are_all_recorded_and_nested(mlflow_server, four_sweeps):
    client = _client(mlflow_server.url)
    experiment = client.get_experiment_by_name("rnnsweep")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("rnnsweep.role") == "sweep"}
    assert set(parents) == set(four_sweeps["parents"])
    children = [r for r in runs if r.info.run_id not in parents]
    assert len(children) == 8 and len(runs) == 12
    batches = {}
    for child in children:
        parent = child.data.tags["mlflow.parentRunId"]
        assert parent in parents and child.data.tags["rnnsweep.sweep"] == parent
        assert child.info.status == "FINISHED" and child.data.tags["rnnsweep.outcome"] == "OK"
        assert "final_loss" in child.data.metrics
        assert len(client.get_metric_history(child.info.run_id, "loss")) == 2
        batches.setdefault(parent, []).append(int(child.data.params["batch"]))
    assert sorted(sorted(b) for b in batches.values()) == [[1, 2], [3, 4], [5, 6], [7, 8]]
    for parent in parents.values():
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["trials_finished"] == 2
    for result in four_sweeps["results"]:  # not MLflow's "View run ..." line per trial
        assert "View run" not in result.stdout + result.stderr


def test_every_parent_has_its_report_through_the_proxy(mlflow_server, four_sweeps):
    client = _client(mlflow_server.url)
    for parent in four_sweeps["parents"]:
        run = client.get_run(parent)
        # Proxied: clients hand artifacts to the server, never to the store directly.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {"report.md", "report.html"} <= {f.path for f in client.list_artifacts(parent)}
        local = client.download_artifacts(parent, "report.md", str(mlflow_server.artifacts.parent
                                                                   / f"dl-{parent}"))
        assert "| batch" in Path(local).read_text()
        # ...and the server wrote them under its --artifacts-destination.
        assert list(mlflow_server.artifacts.rglob(f"{parent}/artifacts/report.md"))
    # Nothing of MLflow's landed in the people's working directories but Hydra's outputs.
    for cwd in four_sweeps["people"]:
        assert sorted(p.name for p in cwd.iterdir()) == ["multirun"]


def test_the_ui_shows_a_parent_with_its_children(mlflow_server, four_sweeps, tmp_path):
    from test_mlflow_ui import CHROMIUM_FLAGS, CHROMIUM_TIMEOUT_S, chromium

    binary = chromium()
    experiment = _client(mlflow_server.url).get_experiment_by_name("rnnsweep")
    page = f"{mlflow_server.url}/#/experiments/{experiment.experiment_id}/runs"
    shot = tmp_path / "team.png"
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         f"--screenshot={shot}", page],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    dom = result.stdout
    assert "Training runs" in dom
    for parent in four_sweeps["parents"]:  # every sweep's parent is a row, linked
        assert f"#/experiments/{experiment.experiment_id}/runs/{parent}" in dom
    # Children are nested under their parents (rows hidden behind each parent's expander)
    # and counted with them: 4 parents and 8 children.
    counted = re.search(r"<strong>(\d+)</strong>\s*matching runs", dom)
    assert counted and int(counted.group(1)) == 12
    assert shot.stat().st_size > 10_000


def test_a_direct_postgresql_store_records_a_sweep(postgres, tmp_path):
    uri = postgres.uri("direct")
    done = run_cli(["-m", *SWEEP, "batch=1,2", f"tracking.uri={uri}",
                    f"hydra.sweep.dir={tmp_path / 'multirun'}"], cwd=tmp_path,
                   timeout=SWEEP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert postgres.password not in done.stdout + done.stderr  # the URI is shown redacted
    client = _client(uri)
    experiment = client.get_experiment_by_name("rnnsweep")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rnnsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.params["batch"]) for r in children) == [1, 2]
    assert {r.data.tags["rnnsweep.outcome"] for r in children} == {"OK"}
    assert {"report.md"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}


# --- refused before anything starts ------------------------------------------------------------


def _refused_quickly(tmp_path: Path, uri: str) -> str:
    started = time.monotonic()
    result = run_cli([*SWEEP, f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'out'}"],
                     cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnsweep: error: tracking.uri="), lines
    assert "Traceback" not in result.stdout + result.stderr
    assert elapsed < REFUSAL_S, f"{elapsed:.1f} s"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    return lines[0]


def test_a_database_that_is_down_is_one_line(postgres, tmp_path):
    from team_server import free_port

    line = _refused_quickly(tmp_path, postgres.uri(port=free_port()))
    assert "the server does not answer" in line


def test_a_wrong_password_is_one_line_and_never_printed(postgres, tmp_path):
    wrong = "Wr0ngPassw0rdXYZ"
    line = _refused_quickly(tmp_path, postgres.uri(password=wrong))
    assert "refused user 'rnnsweep' (wrong password or no such user)" in line
    assert wrong not in line and postgres.password not in line


def test_a_database_that_does_not_exist_is_one_line(postgres, tmp_path):
    line = _refused_quickly(tmp_path, postgres.uri("nosuchdb"))
    assert "the database 'nosuchdb' does not exist" in line
    assert postgres.password not in line


def test_a_server_that_answers_but_is_not_mlflow_is_one_line(postgres, tmp_path):
    # PostgreSQL's own port answers, but not HTTP, let alone MLflow's API.
    line = _refused_quickly(tmp_path, f"http://127.0.0.1:{postgres.port}")
    assert "does not answer HTTP: not an MLflow tracking server" in line

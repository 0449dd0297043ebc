"""A real sweep, served by a real ``mlflow server``, read through its REST API and its UI.

The server listens on 127.0.0.1 only, over the sweep's SQLite store. Headless Chromium
renders the experiment's runs page; its flags send any request that is not for 127.0.0.1
to a dead local proxy, so a test run talks to nothing beyond loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import BASIC_LAUNCHER, cli_env, run_cli, stop_group, toy
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from rnnsweep.report.build import Report, write_report
from rnnsweep.tracking import ROLE_TAG, Tracker

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "test-artifacts" / "mlflow_runs.png"
SWEEP_TIMEOUT_S = 180
SERVER_START_TIMEOUT_S = 120
HTTP_TIMEOUT_S = 30
CHROMIUM_TIMEOUT_S = 120
WINDOW = (1400, 900)

# Every test here starts a sweep, a server and (one) a browser.
pytestmark = pytest.mark.slow

# A two-trial batch sweep that trains (per-step histories), at toy sizes.
SWEEP = toy("batch=1,8", "workload=train", BASIC_LAUNCHER, "hardware.num_cpus=1", "steps=3")
STEPS = 3

# FIELD-NOTES.md's flags for rendering the MLflow UI headless, plus network containment.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=15000",
    # Everything but 127.0.0.1 goes to a closed local port, and no other name resolves.
    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


@dataclass
class Served:
    url: str
    client: MlflowClient  # the store itself, read directly: what the server must show
    experiment_id: str
    parent: str
    children: list  # mlflow Run objects, from the store
    report: Report


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(uri: str, port: int, log: Path) -> subprocess.Popen:
    # Its own session: `mlflow server` starts uvicorn as a child, and the whole group must go.
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env=cli_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}))


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not ready in {SERVER_START_TIMEOUT_S} s:\n"
                f"{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    # Tables and experiment made up front, so the server and the sweep (started side by
    # side to save time) never race to create them; artifacts stay in the tmp directory.
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("rnnsweep", (directory / "artifacts").as_uri())
    url = f"http://127.0.0.1:{free_port()}"
    log = directory / "server.log"
    server = start_server(uri, int(url.rsplit(":", 1)[1]), log)
    try:
        sweep = run_cli(["-m", *SWEEP, f"tracking.uri={uri}",
                         f"hydra.sweep.dir={directory / 'multirun'}"], directory,
                        SWEEP_TIMEOUT_S)
        assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
        (parent,) = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'")
        tracker = Tracker(uri, "rnnsweep")
        report = write_report(tracker, parent.info.run_id)
        wait_ready(server, url, log)
        yield Served(url, client, experiment_id, parent.info.run_id,
                     list(tracker.children(parent.info.run_id)), report)
    finally:
        stop_group(server, term_wait=20, kill_wait=10)


def api(served: Served, endpoint: str, body: dict | None = None, **query: str) -> dict:
    url = f"{served.url}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.load(response)


def search(served: Served, filter_string: str) -> list[dict]:
    body = {"experiment_ids": [served.experiment_id], "filter": filter_string,
            "max_results": 100}
    return api(served, "runs/search", body).get("runs", [])


def test_experiment_and_parent_run_are_served(served):
    found = api(served, "experiments/get-by-name", experiment_name="rnnsweep")["experiment"]
    assert found["experiment_id"] == served.experiment_id
    (parent,) = search(served, f"tags.`{ROLE_TAG}` = 'sweep'")
    assert parent["info"]["run_id"] == served.parent
    assert parent["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert metrics["trials"] == len(served.children) == 2


def test_children_with_their_params_and_metrics_are_served(served):
    runs = search(served, f"tags.`mlflow.parentRunId` = '{served.parent}'")
    by_id = {run["info"]["run_id"]: run for run in runs}
    assert set(by_id) == {child.info.run_id for child in served.children}
    batches = []
    for child in served.children:
        data = by_id[child.info.run_id]["data"]
        params = {p["key"]: p["value"] for p in data["params"]}
        metrics = {m["key"]: m["value"] for m in data["metrics"]}
        tags = {t["key"]: t["value"] for t in data["tags"]}
        assert params == child.data.params  # the whole flattened config
        assert {"batch", "seq_len", "model.cell", "precision.name"} <= params.keys()
        for key in ("step_time_ms", "final_loss", "max_grad_norm", "loss"):
            assert metrics[key] == pytest.approx(child.data.metrics[key])
        assert tags["rnnsweep.outcome"] == "OK"
        batches.append(int(params["batch"]))
    assert sorted(batches) == [1, 8]


def test_metric_histories_are_served_per_step(served):
    for child in served.children:
        for key in ("loss", "grad_norm"):
            history = api(served, "metrics/get-history", run_id=child.info.run_id,
                          metric_key=key)["metrics"]
            assert [m["step"] for m in sorted(history, key=lambda m: m["step"])] == list(
                range(STEPS))
            stored = {m.step: m.value for m in served.client.get_metric_history(
                child.info.run_id, key)}
            assert {m["step"]: m["value"] for m in history} == pytest.approx(stored)


def test_report_artifacts_are_served_on_the_parent(served):
    listed = api(served, "artifacts/list", run_id=served.parent)
    assert {"report.md", "report.html", "plots"} <= {f["path"] for f in listed["files"]}
    plots = api(served, "artifacts/list", run_id=served.parent, path="plots")
    assert {f["path"] for f in plots["files"]} == set(served.report.plots)
    query = urllib.parse.urlencode({"path": "report.md", "run_uuid": served.parent})
    with urllib.request.urlopen(f"{served.url}/get-artifact?{query}",
                                timeout=HTTP_TIMEOUT_S) as response:
        assert response.read().decode() == served.report.markdown


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail("chromium is missing; CI must install it (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def test_chromium_renders_the_runs_table(served, tmp_path):
    binary = chromium()
    page = f"{served.url}/#/experiments/{served.experiment_id}/runs"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    # One render gives both the DOM and the screenshot. A fresh profile: no cache or state
    # from an earlier run can stand in for this one.
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         f"--screenshot={SCREENSHOT}", page],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    dom = result.stdout
    # The runs table links each top-level run; the parent's link proves the page fetched the
    # sweep from the server and rendered it, not just the application shell.
    assert "Training runs" in dom
    assert f"#/experiments/{served.experiment_id}/runs/{served.parent}" in dom
    # Children are nested (collapsed) under the parent, and counted with it.
    counted = re.search(r"<strong>(\d+)</strong>\s*matching runs", dom)
    assert counted and int(counted.group(1)) == 1 + len(served.children)

    image = imread(SCREENSHOT, format="png")
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    rgb = image[..., :3].reshape(-1, 3)
    assert (np.ptp(rgb, axis=1) > 0.2).any()  # coloured run markers, not a blank page


def test_report_md_reads_in_mlflow_artifact_viewer(served, tmp_path):
    """report.md as a user sees it in MLflow's artifact viewer, rendered by Chromium: its
    Markdown is rendered (headings, no raw table pipes), and each plot is named by its
    path, never shown as the literal text of an image link that does not resolve."""
    binary = chromium()
    page = (f"{served.url}/#/experiments/{served.experiment_id}/runs/{served.parent}"
            "/artifacts/report.md")
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         page], capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    dom = result.stdout
    # The viewer fetched report.md and rendered it: its title is a heading, not "# ...".
    assert re.search(r"<h1[^>]*>\s*Sweep report:", dom), dom[-3000:]
    assert "# Sweep report:" not in dom
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "![" not in text  # no image syntax shown as text
    assert not re.search(r"\]\((plots/[^)]*)\)", text)  # nor a link's raw target
    assert served.report.plots
    for path in served.report.plots:  # each plot named by its path, or shown
        assert path in text or f'src="{path}"' in dom, path
    # An image the viewer shows must load: a relative path resolves against the UI's own
    # address, where no plot is served, and the user sees a broken image and its alt text.
    for src in re.findall(r'<img[^>]*\ssrc="([^"]+)"', dom):
        if src.startswith("data:"):
            continue
        address = urllib.parse.urljoin(f"{served.url}/", src)
        try:
            with urllib.request.urlopen(address, timeout=HTTP_TIMEOUT_S) as response:
                body = response.read(8)
        except OSError as exc:
            pytest.fail(f"report.md shows an image that does not load: {src} ({exc})")
        assert body.startswith(b"\x89PNG"), (src, body)

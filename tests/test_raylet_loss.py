"""A sweep whose raylet dies, and signals during a sweep's close: every run ends with a
final status and the command ends in order.

Every process signalled here is the CLI subprocess this test started or one of its own
descendants, found through /proc from its PID: never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import descendants, start_cli, toy, wait_for
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

TRAIN = ["workload=train", "hardware.num_cpus=1"]


def _runs(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("rnnsweep")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _raylet(root: int) -> int:
    (pid,) = [pid for pid in descendants(root)
              if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/raylet")]
    return pid


def test_a_lost_raylet_ends_the_sweep_with_its_runs_marked_and_its_summary(tmp_path):
    store = tmp_path / "mlflow.db"
    proc = start_cli(["-m", *toy("batch=1,2", *TRAIN, "steps=100000", "model.hidden_size=64"),
                      f"tracking.uri=sqlite:///{store}"], tmp_path)
    try:
        wait_for(lambda: len([r for r in _runs(store)
                              if r.data.tags.get("rnnsweep.role") != "sweep"]) == 2,
                 120, "the trials' runs")
        os.kill(_raylet(proc.pid), signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err[-3000:]
    assert time.monotonic() - killed_at < 60
    assert "Traceback" not in err, err[-3000:]
    assert "raylet" in err.strip().splitlines()[-1] and "died" in err, err[-3000:]
    assert "0/2 trials finished" in out, out[-3000:]  # the summary
    runs = _runs(store)
    assert not [r for r in runs if r.info.status == "RUNNING"], \
        [(r.info.status, r.data.tags.get("rnnsweep.role")) for r in runs]
    (parent,) = [r for r in runs if r.data.tags.get("rnnsweep.role") == "sweep"]
    assert parent.info.status == "FAILED"
    assert "raylet" in parent.data.tags["rnnsweep.reason"]
    for trial in (r for r in runs if r is not parent):
        assert trial.info.status == "KILLED"
        assert "raylet" in trial.data.tags["rnnsweep.reason"]


# (delay after the trials' last line, delay before the second SIGTERM): the first lands
# in the closing table or the report, the second in the report or the final statuses.
MOMENTS = [(0.05, 0.15), (0.2, 0.3), (0.4, 0.1), (0.6, 0.3)]


@pytest.mark.parametrize(("first", "second"), MOMENTS)
def test_two_sigterms_during_the_close_leave_every_run_final(tmp_path, first, second):
    store = tmp_path / "mlflow.db"
    proc = start_cli(["-m", *toy("batch=1,2", *TRAIN), f"tracking.uri=sqlite:///{store}"],
                     tmp_path, merge_output=True)
    try:
        for line in proc.stdout:
            if "(2/2 done" in line:  # both trials are over: the sweep closes now
                break
        time.sleep(first)
        proc.send_signal(signal.SIGTERM)
        time.sleep(second)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Not ended by the signal's default action (-15): Ray's shutdown resets SIGTERM's.
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("rnnsweep: stopped by SIGTERM"), out[-3000:]
    runs = _runs(store)
    assert len(runs) == 3
    assert not [r for r in runs if r.info.status == "RUNNING"], \
        [(r.info.status, r.data.tags.get("rnnsweep.role")) for r in runs]


def test_ray_shutdown_keeps_the_sigterm_handler(tmp_path):
    """The cause of the above, alone: after Ray's shutdown a SIGTERM reaches Python."""
    script = (
        "import os, signal, time\n"
        "import ray\n"
        "from rnnsweep.sweep import cluster, interrupts\n"
        "ray.init(address='local', num_cpus=1, include_dashboard=False)\n"
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda s, f: got.append(s))\n"
        "thread = cluster.shutdown()\n"
        "time.sleep(1.0)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "thread.join()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.2)\n"
        "print('handled', len(got))\n")
    proc = subprocess.run([str(Path(os.sys.executable)), "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                               "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "handled 2" in proc.stdout

"""``python -m rnnsweep`` from an installed, non-editable wheel: conf/ and sweeps/ ship
inside the package, and the launcher plugin is found."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import run_cli
from mlflow.tracking import MlflowClient


@pytest.mark.slow
def test_installed_wheel_runs_a_trial_from_any_directory(tmp_path):
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", repo, "--no-deps", "--no-build-isolation", "-w", wheels],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("rnnsweep-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True,
                   capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}

    where = subprocess.run(
        [sys.executable, "-c", "import rnnsweep.config as c; print(c.conf_dir()); "
         "print(c.sweeps_dir())"], cwd=work, env=env, capture_output=True, text=True,
        check=True)
    conf, sweeps = where.stdout.split()
    assert conf == str(target / "rnnsweep" / "conf")
    assert sweeps == str(target / "rnnsweep" / "sweeps")

    # Only the installed wheel is importable: PYTHONPATH replaces the checkout's.
    installed = {"PYTHONPATH": str(target)}
    # One trial of the ready sweep: its swept key given one value (a sweep needs -m).
    done = run_cli(["+sweep=clipping", "clipping.max_norm=1.0", "steps=2",
                    "model.hidden_size=8", "model.input_size=4",
                    "seq_len=5", f"tracking.uri=sqlite:///{work}/mlflow.db"], work, 300,
                   installed)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("rnnsweep").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.cell"] == "rnn"  # the ready sweep's override applied
    assert len(client.get_metric_history(run.info.run_id, "grad_norm")) == 2

    plugins = run_cli(["--info", "plugins"], work, 120, installed)
    assert "RnnsweepRayLauncher" in plugins.stdout

"""``pip install -e .`` and ``pip install .`` with no extra flags: Hydra finds the launcher
plugin either way, and a multirun on it records its trial.

Each install goes into a scratch virtual environment of its own. Its dependencies come from
the test's own environment through a ``.pth`` line naming that site-packages directory;
Python does not process the ``.pth`` files inside a directory added that way, so the test
environment's own install of rnnsweep is invisible there and the scratch install is the
only rnnsweep it can import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def scratch_venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", where], check=True,
                   timeout=120)
    python = where / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    Path(site.stdout.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}


@pytest.mark.parametrize("editable", [True, False], ids=["pip-install-e", "pip-install"])
def test_plain_install_finds_the_launcher(tmp_path, editable):
    python = scratch_venv(tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    unseen = subprocess.run([python, "-c", "import rnnsweep"], cwd=work, env=clean_env(),
                            capture_output=True, text=True)
    assert unseen.returncode != 0, "the scratch environment must start without rnnsweep"

    target = ["-e", str(REPO)] if editable else [str(REPO)]
    # No build isolation: the test environment has hatchling (the dev extra), and the
    # build then needs nothing from a package index.
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q",
                    "--python", str(python), "install", "--no-deps", "--no-build-isolation",
                    *target], check=True, capture_output=True, timeout=300, env=clean_env())

    plugins = subprocess.run([python, "-m", "rnnsweep", "--info", "plugins"], cwd=work,
                             env=clean_env(), capture_output=True, text=True, timeout=120)
    assert "RnnsweepRayLauncher" in plugins.stdout, plugins.stderr[-2000:]

    store = work / "mlflow.db"
    done = subprocess.run(
        [python, "-m", "rnnsweep", "-m", "batch=2", "workload=train", "steps=1",
         "model.input_size=4", "model.hidden_size=8", "seq_len=5",
         f"tracking.uri=sqlite:///{store}"],
        cwd=work, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Unknown plugin class" not in done.stderr
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("rnnsweep").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.status for r in children] == ["FINISHED"]

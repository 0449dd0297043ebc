"""Shared fixtures: composed configs, throwaway MLflow stores, the CLI in a subprocess.

Nothing here mocks Hydra or MLflow: configs are composed from ``conf/`` exactly as the
CLI composes them, and stores are real SQLite files under pytest's tmp directories.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

import rnnsweep.config
import rnnsweep.config.sweeps

REPO = Path(__file__).resolve().parents[1]

# Tiny shapes: every code path runs, in milliseconds.
TOY = [
    "model.input_size=8",
    "model.hidden_size=16",
    "seq_len=10",
    "steps=3",
    "warmup=1",
    "min_run_time=0.05",
]

# Hydra's own in-process launcher. It ships with Hydra, so the option always exists; it
# keeps subprocess multiruns fast and independent of whichever launcher is the default.
# No assertion depends on which launcher ran the trials.
BASIC_LAUNCHER = "hydra/launcher=basic"

# Environment a test's CLI subprocess must not inherit: it would attach the runs to some
# other sweep, divert records, or point validation at a Ray cluster.
_FOREIGN_ENV = ("RNNSWEEP_PARENT_RUN_ID", "RNNSWEEP_RECORDS_TO_DRIVER", "RAY_ADDRESS")

CLI_TIMEOUT_S = 300


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


# --- Hydra -------------------------------------------------------------------------------


def compose_cfg(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config the CLI would compose for ``overrides`` (no Hydra job is started)."""
    rnnsweep.config.register()
    rnnsweep.config.sweeps.register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(rnnsweep.config.conf_dir()), version_base="1.3"):
            return compose("config", overrides=[BASIC_LAUNCHER, *overrides])
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def toy_overrides() -> list[str]:
    return list(TOY)


# --- MLflow ------------------------------------------------------------------------------


@dataclass
class Store:
    path: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.path}"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def experiment(self, name: str) -> str:
        """Creates ``name`` with its artifacts beside the database (MLflow's default root,
        ``./mlruns``, would put them in whatever directory the tests run from)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, (self.path.parent / "artifacts").as_uri())

    def runs(self, experiment: str = "rnnsweep") -> list:
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return self.client.search_runs([found.experiment_id], run_view_type=ViewType.ALL,
                                       max_results=1000)

    def all_runs(self) -> list:
        ids = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        return self.client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory) -> Path:
    """Creating MLflow's tables costs seconds; do it once and copy the file per test."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path.parent)  # the Default experiment's artifact root is ./mlruns
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def new_store(template: Path, directory: Path) -> Store:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mlflow.db"
    shutil.copyfile(template, path)
    return Store(path)


@pytest.fixture
def mlflow_store(_migrated_store, tmp_path) -> Store:
    """An empty SQLite tracking store of its own."""
    return new_store(_migrated_store, tmp_path / "store")


@pytest.fixture(scope="module")
def module_store(_migrated_store, tmp_path_factory) -> Store:
    return new_store(_migrated_store, tmp_path_factory.mktemp("store"))


# --- the CLI -----------------------------------------------------------------------------


def run_cli(args: list[str], cwd: Path, timeout: float = CLI_TIMEOUT_S,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m rnnsweep *args`` in ``cwd`` (where Hydra's default outputs/ would go)."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "rnnsweep", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def cli_paths(store: Store, tmp: Path) -> list[str]:
    """Overrides that keep a CLI call's store and Hydra output under ``tmp``."""
    return [f"tracking.uri={store.uri}", f"hydra.run.dir={tmp / 'out'}",
            f"hydra.sweep.dir={tmp / 'multirun'}"]

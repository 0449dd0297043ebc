"""Shared fixtures and helpers: toy sizes, composed configs, throwaway MLflow stores, and
the one way tests (and benchmarks/) run the CLI.

Nothing here mocks Hydra or MLflow: configs are composed from ``conf/`` exactly as the
CLI composes them, and stores are real SQLite files under pytest's tmp directories.
Heavy libraries are imported where they are used, so that ``benchmarks/`` can import
the toy sizes and the CLI runner without paying for torch.
"""

from __future__ import annotations

import os

# Before any test module imports Ray, which reads it then: every Ray a test starts (the
# embedded one, ray.cluster_utils' nodes) listens on loopback only, whatever module was
# collected first.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import shutil  # noqa: E402
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tiny shapes: every code path runs, in milliseconds. The one set of toy sizes.
TOY = (
    "model.input_size=8",
    "model.hidden_size=16",
    "seq_len=10",
    "steps=3",
    "warmup=1",
    "min_run_time=0.05",
)


def toy(*overrides: str) -> list[str]:
    """The toy sizes with ``overrides`` applied: a key set in ``overrides`` replaces the toy
    value rather than being given twice."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [o for o in TOY if o.split("=", 1)[0] not in keys] + list(overrides)


# Hydra's own in-process launcher. It ships with Hydra, so the option always exists; it
# keeps subprocess multiruns fast and independent of whichever launcher is the default.
# No assertion depends on which launcher ran the trials.
BASIC_LAUNCHER = "hydra/launcher=basic"

# Environment a test's CLI subprocess must not inherit: it would point validation and the
# launcher at some other Ray cluster.
_FOREIGN_ENV = ("RAY_ADDRESS",)
# Nothing a test starts reports usage off the machine.
_OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                "RAY_USAGE_STATS_ENABLED": "0"}

CLI_TIMEOUT_S = 300


def pytest_collection_modifyitems(config, items):
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


# --- Hydra -------------------------------------------------------------------------------


def compose_cfg(overrides: Iterable[str] = ()):
    """The config the CLI would compose for ``overrides`` (no Hydra job is started)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import rnnsweep.config
    import rnnsweep.config.sweeps

    rnnsweep.config.register()
    rnnsweep.config.sweeps.register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(rnnsweep.config.conf_dir()), version_base="1.3"):
            return compose("config", overrides=[BASIC_LAUNCHER, *overrides])
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="session", autouse=True)
def registered_configs() -> None:
    """The schema and the ready sweeps in Hydra's ConfigStore, as the CLI registers them
    before it composes anything (``check_overrides`` needs them)."""
    import rnnsweep.config
    import rnnsweep.config.sweeps

    rnnsweep.config.register()
    rnnsweep.config.sweeps.register()


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
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def experiment(self, name: str) -> str:
        """Creates ``name`` with its artifacts beside the database (MLflow's default root,
        ``./mlruns``, would put them in whatever directory the tests run from)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, (self.path.parent / "artifacts").as_uri())

    def runs(self, experiment: str = "rnnsweep") -> list:
        from mlflow.entities import ViewType

        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return self.client.search_runs([found.experiment_id], run_view_type=ViewType.ALL,
                                       max_results=1000)

    def all_runs(self) -> list:
        from mlflow.entities import ViewType

        ids = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        return self.client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory) -> Path:
    """Creating MLflow's tables costs seconds; do it once and copy the file per test."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path.parent)  # the Default experiment's artifact root is ./mlruns
        Store(path).client.search_experiments()
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


def cli_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout importable, nothing foreign
    inherited, offline. ``extra_env`` wins (a wheel test replaces PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(_OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra_env or {})
    return env


def start_cli(args: Iterable[str], cwd: Path, extra_env: dict[str, str] | None = None,
              module: str = "rnnsweep", merge_output: bool = False,
              stdout=subprocess.PIPE) -> subprocess.Popen:
    """``python -m <module> *args`` in ``cwd``, started and left running. The returned
    process's pid is the only handle a test may signal (its own sweep's driver).
    ``merge_output`` sends stderr to ``stdout`` (a pipe, or a file for long runs)."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd,
                            env=cli_env(extra_env), stdout=stdout,
                            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
                            text=True)


def run_cli(args: Iterable[str], cwd: Path, timeout: float = CLI_TIMEOUT_S,
            extra_env: dict[str, str] | None = None,
            module: str = "rnnsweep") -> subprocess.CompletedProcess:
    """``python -m <module> *args`` in ``cwd`` (where Hydra's default outputs/ would go),
    run to completion; killed (by its own pid) if it outlives ``timeout``."""
    args = list(args)
    proc = start_cli(args, cwd, extra_env, module)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli_paths(store: Store | str, tmp: Path) -> list[str]:
    """Overrides that keep a CLI call's store and Hydra output under ``tmp``."""
    uri = store if isinstance(store, str) else store.uri
    return [f"tracking.uri={uri}", f"hydra.run.dir={tmp / 'out'}",
            f"hydra.sweep.dir={tmp / 'multirun'}"]


# --- processes a test may signal -----------------------------------------------------------
# A process is known by its pid and its start time (field 22 of /proc/<pid>/stat), so a
# pid the kernel reuses for someone else's process is never mistaken for ours.


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # gone meanwhile
        return None


def stop_group(proc: subprocess.Popen, term_wait: float = 10, kill_wait: float = 30) -> None:
    """Ends the process group a test started (``start_new_session=True``), by its id:
    SIGTERM, then SIGKILL if it is still there after ``term_wait`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=term_wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=kill_wait)


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live process below ``root`` (read from /proc, so it
    sees only the tree of a process this test started)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = (int(fields[1]), fields[19])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, start_time) in table.items():
            if ppid == parent and child not in found:
                found[child] = start_time
                frontier.append(child)
    return found


def alive(processes: dict[int, str]) -> list[int]:
    """Which of ``processes`` (from ``descendants`` or ``trial_pids``) still run."""
    living = []
    for pid, start_time in processes.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == start_time and fields[0] != "Z":
            living.append(pid)
    return living


def trial_pids(idx: int, root: int | None = None) -> dict[int, str]:
    """The Ray workers running trial ``idx`` (Ray titles a worker after its task,
    ``ray::rnnsweep-trial-<idx>``), searched only below ``root``: the CLI the test
    started, or by default this test process (whose own Ray cluster started the
    workers). Never a process of anyone else's sweep on a shared machine."""
    title = f"ray::rnnsweep-trial-{idx}"
    found = {}
    for pid, start_time in descendants(os.getpid() if root is None else root).items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.replace(b"\0", b" ").decode(errors="replace").strip() == title:
            found[pid] = start_time
    return found


def wait_for(predicate, timeout: float, what: str):
    """``predicate()``'s first truthy value within ``timeout`` seconds. A predicate that
    raises (a store not created yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")

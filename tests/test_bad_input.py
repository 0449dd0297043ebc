"""Every bad input is one line on stderr, exit status 2, before anything starts.

Each case runs the real CLI in a subprocess (a few at a time). Each asserts: exit 2, one
line on stderr naming the key, no traceback, no Hydra output directory, and the store
byte-identical afterwards (or, where the case names a store that does not exist, still
absent). Issue #10's "What was seen" list is covered case by case; nothing here starts
Ray, because every refusal comes before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BASIC_LAUNCHER, TOY, Store, new_store, run_cli

import rnnsweep.config
import rnnsweep.config.sweeps
from rnnsweep import redaction
from rnnsweep.config.bounds import weight_count
from rnnsweep.preflight.local import check_local_cpus
from rnnsweep.preflight.validation import ConfigError, check_overrides
from rnnsweep.record import TrialRecord
from rnnsweep.store import check_store
from rnnsweep.tracking import Tracker


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    words: tuple[str, ...]  # the line must name these (the key, and what is wrong)
    # Prepares the case's directory; returns the file the case must leave unchanged or
    # absent (default: the shared store copy).
    setup: Callable[[Path], Path] | None = None


def _not_sqlite(tmp: Path) -> Path:
    path = tmp / "garbage.db"
    path.write_bytes(b"this is not a database\n" * 100)
    return path


def _truncated(tmp: Path) -> Path:
    path = tmp / "truncated.db"
    shutil.copyfile(tmp / "store" / "mlflow.db", path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return path


def _a_directory(tmp: Path) -> Path:
    (tmp / "adir.db").mkdir()
    return tmp / "adir.db"


SILENT_PORT = "SILENT_PORT"  # replaced by the port of a server that never answers
LONG_NAME = "x" * 5000

CASES: dict[str, Case] = {
    # --- the store (issue #10: tracebacks or hangs, each after Ray had started) ---
    # pg8000: the dev extra installs psycopg (the postgres extra), not this driver.
    "postgres driver missing": Case(("tracking.uri=postgresql+pg8000://127.0.0.1:1/x",),
                                    ("tracking.uri", "pip install")),
    "mysql driver missing": Case(("tracking.uri=mysql://127.0.0.1:1/x",),
                                 ("tracking.uri", "pip install")),
    "ftp scheme": Case(("tracking.uri=ftp://x",), ("tracking.uri", "ftp", "sqlite://")),
    "credentials in another uri": Case(("-m", "ray.address=ray://u:pw@127.0.0.1:10001"),
                                       ("ray.address", "credentials", "tracking.uri")),
    "plain path": Case(("tracking.uri=mlruns",), ("tracking.uri", "file store")),
    "empty uri": Case(("tracking.uri=''",), ("tracking.uri",)),
    "parent is a file": Case(("tracking.uri=sqlite:////etc/passwd/x.db",),
                             ("tracking.uri", "/etc/passwd", "file")),
    "parent missing": Case(("tracking.uri=sqlite:////nonexistent-rnnsweep/dir/x.db",),
                           ("tracking.uri", "does not exist")),
    "store is a directory": Case(("tracking.uri=sqlite:///adir.db",),
                                 ("tracking.uri", "directory"), _a_directory),
    "not a sqlite file": Case(("tracking.uri=sqlite:///garbage.db",),
                              ("tracking.uri", "not a SQLite database"), _not_sqlite),
    "truncated store": Case(("tracking.uri=sqlite:///truncated.db",),
                            ("tracking.uri", "damaged"), _truncated),
    "server refuses": Case(("tracking.uri=http://127.0.0.1:9",),
                           ("tracking.uri", "does not answer")),
    "server silent": Case((f"tracking.uri=http://127.0.0.1:{SILENT_PORT}",),
                          ("tracking.uri", "within 5 s")),
    "empty experiment": Case(("tracking.experiment=''",), ("tracking.experiment",)),
    "long experiment": Case((f"tracking.experiment={LONG_NAME}",),
                            ("tracking.experiment", "256")),
    # --- numbers silently accepted before ---
    "min_run_time=inf": Case(("min_run_time=inf",), ("min_run_time",)),
    "min_run_time=nan": Case(("min_run_time=nan",), ("min_run_time",)),
    "min_run_time=0": Case(("min_run_time=0",), ("min_run_time", "(0, 600]")),
    "min_run_time=86400": Case(("min_run_time=86400",), ("min_run_time", "600")),
    "steps=10000000": Case(("steps=10000000",), ("steps", "100000")),
    "repeats=10000000": Case(("repeats=10000000",), ("repeats",)),
    "warmup=10000000": Case(("warmup=10000000",), ("warmup",)),
    "ray.max_retries=-1": Case(("ray.max_retries=-1",), ("ray.max_retries",)),
    "task.lr=inf": Case(("task.lr=inf",), ("task.lr", "finite")),
    "task.lr=nan": Case(("task.lr=nan",), ("task.lr",)),
    "task.lr=0": Case(("task.lr=0",), ("task.lr", "> 0")),
    "inject_nan_steps outside": Case(("guard.inject_nan_steps=[-1,100]", "steps=3"),
                                     ("guard.inject_nan_steps", "steps=3")),
    "inject_nan_steps at steps": Case(("guard.inject_nan_steps=[3]", "steps=3"),
                                      ("guard.inject_nan_steps",)),
    "raise_at_step beyond": Case(("guard.raise_at_step=10", "steps=3"),
                                 ("guard.raise_at_step",)),
    "saturation_level=2": Case(("guard.saturation_level=2",), ("guard.saturation_level",)),
    "explode_threshold=-1": Case(("guard.explode_threshold=-1",),
                                 ("guard.explode_threshold",)),
    "max_norm=inf": Case(("clipping.max_norm=inf",), ("clipping.max_norm",)),
    "recurrent_init_scale=nan": Case(("model.recurrent_init_scale=nan",),
                                     ("model.recurrent_init_scale",)),
    "num_gpus=-1": Case(("hardware.num_gpus=-1",), ("hardware.num_gpus",)),
    "num_cpus=0": Case(("hardware.num_cpus=0",), ("hardware.num_cpus",)),
    "single run num_cpus=64": Case(("hardware.num_cpus=64",), ("hardware.num_cpus", "CPUs")),
    "poll_s=-1": Case(("-m", "batch=1", "hydra.launcher.poll_s=-1"),
                      ("hydra.launcher.poll_s",)),
    "poll_s=0": Case(("-m", "batch=1", "hydra.launcher.poll_s=0"),
                     ("hydra.launcher.poll_s",)),
    "seed too large": Case(("seed=99999999999999999999999",), ("seed",)),
    "seed=-1": Case(("seed=-1",), ("seed",)),
    "seed=-1 in a sweep": Case(("-m", "seed=0,-1", BASIC_LAUNCHER), ("seed",)),
    "hidden_size=1e8": Case(("model.hidden_size=100000000",),
                            ("model.hidden_size", "needs about")),
    "num_layers=100000": Case(("model.num_layers=100000", "model.hidden_size=4096"),
                              ("model.num_layers", "needs about")),
    "batch=1e9": Case(("batch=1000000000",), ("batch", "needs about")),
    "a swept value too large": Case(("-m", "steps=1,10000000"), ("steps",)),
}


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """Accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.is_dir():
        return "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _toy_without(args: tuple[str, ...]) -> list[str]:
    keys = {a.split("=", 1)[0] for a in args}
    return [o for o in TOY if o.split("=", 1)[0] not in keys]


@pytest.fixture(scope="module")
def populated_store(_migrated_store, tmp_path_factory) -> Store:
    """A store holding one finished run: what a bad command must leave as it is."""
    store = new_store(_migrated_store, tmp_path_factory.mktemp("populated"))
    store.experiment("rnnsweep")
    tracker = Tracker(store.uri, "rnnsweep")
    record = TrialRecord(params={"batch": "32"}, tags={"rnnsweep.outcome": "OK"},
                         metrics={"latency_ms": 1.5}, step_metrics={"loss": [1.0, 0.5]},
                         artifacts={"config.yaml": b"batch: 32\n"})
    tracker.write_record(tracker.start_run("pre-existing"), record)
    return store


@pytest.fixture(scope="module")
def results(populated_store, tmp_path_factory):
    def call(name: str):
        case = CASES[name]
        tmp = tmp_path_factory.mktemp("bad")
        store = new_store(populated_store.path, tmp / "store")
        watched = case.setup(tmp) if case.setup else store.path
        args = [a.replace(SILENT_PORT, str(port)) for a in case.args]
        paths = [f"hydra.run.dir={tmp / 'out'}", f"hydra.sweep.dir={tmp / 'multirun'}"]
        if not any(a.startswith("tracking.uri=") for a in args):
            paths.append(f"tracking.uri={store.uri}")
        before = {p: _digest(p) for p in (watched, store.path)}
        flags = [a for a in args if a.startswith("-")]  # Hydra's parser wants them first
        overrides = [a for a in args if not a.startswith("-")]
        result = run_cli([*flags, *_toy_without(case.args), *overrides, *paths], cwd=tmp,
                         timeout=120)
        after = {p: _digest(p) for p in before}
        return tmp, result, before, after

    with _silent_server() as port, ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(call, CASES), strict=True))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_memory_estimate_counts_the_models_weights_exactly(cell):
    from conftest import compose_cfg

    from rnnsweep.trial.run import build_model

    cfg = compose_cfg([f"model={cell}", "model.input_size=7", "model.hidden_size=5",
                       "model.num_layers=3"])
    model = build_model(cfg)
    assert weight_count(cfg) == sum(p.numel() for p in model.parameters())


def test_at_least_forty_cases():
    assert len(CASES) >= 40


# Cases the in-process check can run in milliseconds (no silent server to wait 5 s on).
FAST = [name for name, case in CASES.items() if not any(SILENT_PORT in a for a in case.args)]


@pytest.mark.parametrize("name", FAST)
def test_refused_by_the_checks_in_process(name, populated_store, tmp_path, monkeypatch):
    """The fast tier's view of the same table: the CLI's checks, called directly."""
    rnnsweep.config.register()  # as the CLI does first
    rnnsweep.config.sweeps.register()
    case = CASES[name]
    store = new_store(populated_store.path, tmp_path / "store")
    if case.setup:
        case.setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = list(case.args)
    multirun = "-m" in args
    overrides = [a for a in args if not a.startswith("-")]
    if not any(a.startswith("tracking.uri=") for a in overrides):
        overrides.append(f"tracking.uri={store.uri}")
    overrides = [*_toy_without(case.args), *overrides]
    with pytest.raises(ConfigError) as refused:
        overrides = redaction.hide_in_overrides(overrides)
        checked = check_overrides(overrides, multirun)
        check_store(checked.base, overrides, multirun)
        if not multirun:
            for trial in checked.trials:
                check_local_cpus(trial)
    message = str(refused.value)
    assert "\n" not in message
    missing = [w for w in case.words if w.lower() not in message.lower()]
    assert not missing, f"{message!r} lacks {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, results):
    tmp, result, before, after = results[name]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("rnnsweep: error: ")
    missing = [w for w in CASES[name].words if w.lower() not in line.lower()]
    assert not missing, f"{line!r} lacks {missing}"
    assert after == before  # byte-identical store (or still absent)
    assert not any((tmp / d).exists() for d in ("out", "multirun", "outputs"))


@pytest.mark.slow
def test_missing_parent_directory_is_not_created(results):
    assert not Path("/nonexistent-rnnsweep").exists()


@pytest.fixture
def read_only_dir(tmp_path) -> Iterator[Path]:
    """A directory no one may write: a read-only tmpfs where this process may mount
    (root ignores permission bits), else permission bits."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                             capture_output=True, check=False).returncode == 0
    if not mounted:
        pytest.skip("running as root where tmpfs cannot be mounted: no read-only directory")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.slow
def test_read_only_working_directory(read_only_dir, populated_store, tmp_path):
    """The default store (``sqlite:///mlflow.db``) and Hydra's outputs/ both go into the
    working directory; a read-only one is refused before anything starts."""
    result = run_cli([*TOY], cwd=read_only_dir, timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "tracking.uri" in line and "not writable" in line
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.slow
def test_read_only_output_directory(read_only_dir, populated_store, tmp_path):
    store = new_store(populated_store.path, tmp_path / "store")
    digest = _digest(store.path)
    result = run_cli(["-m", *TOY, "batch=1,2", f"tracking.uri={store.uri}",
                      f"hydra.sweep.dir={read_only_dir / 'multirun'}"], cwd=tmp_path,
                     timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "hydra.sweep.dir" in line and "not writable" in line
    assert _digest(store.path) == digest

"""Secure by default: credentials never written, nothing sent off the machine, Ray token
authentication failures named, DIVERGED trials and a failed single run's exit status.

The end-to-end tests use a real ``mlflow server`` and a real ``ray start`` head on
127.0.0.1, each started by this test and stopped by the process group it started.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TOY, compose_cfg, new_store, run_cli, stop_group
from mlflow.tracking import MlflowClient

from rnnsweep import privacy, redaction
from rnnsweep.record import DIVERGED
from rnnsweep.trial.run import run_trial

PASSWORD = "s3cr3tpw-0123456789"
ADMIN = "admin"  # MLflow's basic-auth app creates this user with MLFLOW_AUTH_ADMIN_PASSWORD
VENV_BIN = Path(sys.executable).parent


# --- redaction ---------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for key in (redaction.SECRET_URI_ENV, redaction.USERNAME_ENV, redaction.PASSWORD_ENV,
                redaction.TOKEN_ENV):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("text", "expected"), [
    ("http://alice:s3cr3tpw@127.0.0.1:5055", "http://alice:***@127.0.0.1:5055"),
    ("postgresql://u:pw@db:5432/x", "postgresql://u:***@db:5432/x"),
    ("https://h/api?token=abc&x=1", "https://h/api?token=***&x=1"),
    ("https://h/?access_token=abc", "https://h/?access_token=***"),
    ("https://ghp_0123456789abcdefghijkl@h", "https://***@h"),
    ("tracking.uri=http://a:b@h:1 and http://c:d@e", "tracking.uri=http://a:***@h:1 and "
     "http://c:***@e"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://bob@h:1", "http://bob@h:1"),
    ("no uri here", "no uri here"),
])
def test_redact(text, expected):
    assert redaction.redact(text) == expected


def test_http_credentials_move_to_mlflow_environment(clean_env):
    public = redaction.hide_credentials(f"http://alice:{PASSWORD}@127.0.0.1:5055/?token=t1")
    assert public == "http://127.0.0.1:5055/"
    assert os.environ[redaction.USERNAME_ENV] == "alice"
    assert os.environ[redaction.PASSWORD_ENV] == PASSWORD
    assert os.environ[redaction.TOKEN_ENV] == "t1"
    assert redaction.connection_uri(public) == public  # MLflow adds the credentials itself


def test_database_uri_is_shown_masked_and_connected_in_full(clean_env):
    real = f"postgresql://u:{PASSWORD}@db:5432/x"
    public = redaction.hide_credentials(real)
    assert PASSWORD not in public and public == "postgresql://u:***@db:5432/x"
    assert redaction.connection_uri(public) == real
    assert redaction.connection_uri("postgresql://v:***@other/y") == "postgresql://v:***@other/y"


def test_overrides_lose_credentials_before_hydra(clean_env):
    args = ["-m", f"tracking.uri=http://alice:{PASSWORD}@h:1", "batch=1,2",
            f"+tracking.uri=postgresql://u:{PASSWORD}@db/x"]
    hidden = redaction.hide_in_overrides(args)
    assert hidden[0] == "-m" and hidden[2] == "batch=1,2"
    assert hidden[1] == "tracking.uri=http://h:1"
    assert PASSWORD not in " ".join(hidden)


@pytest.mark.parametrize("arg", [
    f"ray.address=ray://alice:{PASSWORD}@127.0.0.1:10001",
    f"+ray.working_dir=https://example.org/code.zip?token={PASSWORD}",
])
def test_credentials_in_any_other_override_are_refused(clean_env, arg):
    with pytest.raises(redaction.CredentialsInOverride) as refused:
        redaction.hide_in_overrides(["-m", arg])
    assert PASSWORD not in str(refused.value)
    assert str(refused.value).startswith(arg.split("=", 1)[0].lstrip("+"))


def test_ray_starts_without_the_tracking_credentials(clean_env):
    """Ray's processes, and so every worker, inherit the environment ray.init runs in."""
    redaction.hide_credentials(f"http://alice:{PASSWORD}@127.0.0.1:5055")
    with privacy.no_cloud_probes():
        assert PASSWORD not in " ".join(os.environ.values())
    assert os.environ[redaction.PASSWORD_ENV] == PASSWORD  # the driver's client still has it


def test_importing_rnnsweep_changes_no_environment_variable():
    code = ("import os; before = dict(os.environ); import rnnsweep, rnnsweep.api, rnnsweep.cli; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


ENTRY_POINTS = {
    "rnnsweep": "from rnnsweep.entry import main",
    "api": "from rnnsweep.api import sweep as main",
    "report": "from rnnsweep.report.cli import main",
    "compare": "from rnnsweep.compare import main",
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_each_entry_point_turns_telemetry_off_and_the_users_choice_wins(entry):
    """Each runs with a command it refuses at once; telemetry is off by then."""
    code = "\n".join([
        "import os, sys",
        ENTRY_POINTS[entry],
        "sys.argv[1:] = ['--no-such-flag']",
        "try:",
        "    main(['--no-such-flag']) if main.__name__ == 'sweep' else main()",
        "except BaseException:",
        "    pass",
        "print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'),",
        "      os.environ.get('RAY_USAGE_STATS_ENABLED'))",
    ])
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split()[-2:] == ["true", "0"], done.stderr[-2000:]
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split()[-2:] == ["false", "0"], done.stderr[-2000:]


# --- DIVERGED ----------------------------------------------------------------------------


def test_every_step_nonfinite_is_diverged_not_ok():
    cfg = compose_cfg([*TOY, "workload=train", "steps=3", "guard.inject_nan_steps=[0,1,2]"])
    record = run_trial(cfg)
    assert record.outcome == DIVERGED and record.tags["rnnsweep.outcome"] == DIVERGED
    assert "non-finite" in record.reason
    assert record.status == "FINISHED"
    partial = run_trial(compose_cfg([*TOY, "workload=train", "steps=3",
                                     "guard.inject_nan_steps=[1]"]))
    assert partial.outcome == "OK"


@pytest.mark.slow
def test_single_run_whose_trial_failed_exits_1(mlflow_store, tmp_path):
    result = run_cli([*TOY, "workload=train", "guard.raise_at_step=0",
                      f"tracking.uri={mlflow_store.uri}", f"hydra.run.dir={tmp_path / 'out'}"],
                     cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    (run,) = mlflow_store.runs()
    assert run.info.status == "FAILED"


# --- credentials, end to end -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(_migrated_store, tmp_path) -> Iterator[tuple[int, Path]]:
    """A real MLflow server on loopback that requires a password (its basic-auth app)."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (dev)")
    root = tmp_path / "server"
    store = new_store(_migrated_store, root)
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--app-name", "basic-auth",
         "--backend-store-uri", store.uri,
         "--artifacts-destination", (root / "artifacts").as_uri(), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield port, root
    finally:
        stop_group(proc)


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_credentials_in_the_uri_are_written_nowhere(mlflow_server, tmp_path, clean_env):
    port, server_root = mlflow_server
    uri = f"http://{ADMIN}:{PASSWORD}@127.0.0.1:{port}"
    work = tmp_path / "work"
    work.mkdir()
    sweep = run_cli(["-m", *TOY, "workload=train",
                     "guard.inject_nan_steps=[0,1,2],[]", f"tracking.uri={uri}"], cwd=work)
    single = run_cli([*TOY, "workload=train", f"tracking.uri={uri}"], cwd=work)
    report = subprocess.run(
        [sys.executable, "-m", "rnnsweep.report", "--tracking-uri", uri, "--experiment",
         "rnnsweep", "--out", str(work / "report")], cwd=work, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=300, check=False)
    for proc in (sweep, single, report):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert PASSWORD not in proc.stdout + proc.stderr
    # The real URI was used (the server refuses requests without the password): the runs
    # are on the server, under the credential-free URI.
    clean_env.setenv(redaction.USERNAME_ENV, ADMIN)
    clean_env.setenv(redaction.PASSWORD_ENV, PASSWORD)
    client = MlflowClient(f"http://127.0.0.1:{port}")
    exp = client.get_experiment_by_name("rnnsweep")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4  # parent, two trials, the single run
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert {r.data.params["tracking.uri"] for r in children} == {f"http://127.0.0.1:{port}"}
    for run in runs:
        texts = [run.info.run_name, *run.data.params.values(), *run.data.tags.values()]
        assert not [t for t in texts if PASSWORD in t]
    # DIVERGED is its own outcome, counted on the parent and shown in the report.
    parent = next(r for r in runs if r.data.tags.get("rnnsweep.role") == "sweep")
    assert parent.data.metrics["trials_diverged"] == 1
    assert "1 diverged" in sweep.stdout
    assert DIVERGED in (work / "report" / "report.md").read_text()
    # Hydra's own files (multirun.yaml, .hydra/), config.yaml artifacts, reports, the store.
    assert list(work.rglob("multirun.yaml")) and list(work.rglob("overrides.yaml"))
    assert _files_containing(work, PASSWORD.encode()) == []
    assert _files_containing(server_root, PASSWORD.encode()) == []
    assert list(server_root.rglob("config.yaml"))


@pytest.mark.slow
def test_wrong_password_is_one_line(mlflow_server, tmp_path):
    port, _ = mlflow_server
    result = run_cli([*TOY, f"tracking.uri=http://{ADMIN}:wrong-{PASSWORD}@127.0.0.1:{port}"],
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.splitlines()
    assert "tracking.uri" in line and "refused the credentials" in line
    assert PASSWORD not in line
    assert not (tmp_path / "outputs").exists()


# --- nothing leaves the machine ----------------------------------------------------------

_INET = re.compile(r'(connect|sendto)\(.*sin6?_port=htons\((\d+)\).*?'
                   r'(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6?, "([^"]+)")')
_LOOPBACK = re.compile(r"^(127\.|::1$|::ffff:127\.)")


def outbound_attempts(trace: str) -> list[str]:
    """Lines of ``strace -e trace=connect,sendto`` that try to reach beyond loopback, or
    resolve a name through DNS or a resolver daemon (anywhere, loopback included)."""
    bad = []
    for line in trace.splitlines():
        match = _INET.search(line)
        if match:
            port, address = int(match.group(2)), match.group(3) or match.group(4)
            if port == 53 or not _LOOPBACK.match(address):
                bad.append(line)
        elif "nscd/socket" in line and ") = 0" in line:
            bad.append(line)
        elif "resolve" in line and "AF_UNIX" in line and ") = 0" in line:
            bad.append(line)  # systemd-resolved's varlink socket
    return bad


def test_outbound_detector_catches_what_ray_and_mlflow_did():
    """The lines strace printed for Ray's cloud probe and a DNS lookup before this fix."""
    seen = [
        '812 connect(31, {sa_family=AF_INET, sin_port=htons(80), '
        'sin_addr=inet_addr("169.254.169.254")}, 16) = -1 EINPROGRESS',
        '812 connect(7, {sa_family=AF_INET, sin_port=htons(53), '
        'sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '9 sendto(3, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(443), '
        'sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2606:4700::1", &sin6_addr), '
        'sin6_scope_id=0}, 28) = 1',
        '9 connect(3, {sa_family=AF_INET, sin_port=htons(53), '
        'sin_addr=inet_addr("127.0.0.53")}, 16) = 0',
    ]
    fine = [
        '5 connect(3, {sa_family=AF_INET, sin_port=htons(40285), '
        'sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '5 connect(3, {sa_family=AF_INET6, sin6_port=htons(1), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        '5 connect(4, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        '5 sendto(14, "\\0", 1, 0, NULL, 0) = 1',
    ]
    assert outbound_attempts("\n".join(seen)) == seen
    assert outbound_attempts("\n".join(fine)) == []


def _strace() -> str:
    path = shutil.which("strace")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("strace is not installed (.ci/run installs it)")
        pytest.skip("strace is not installed")
    return path


@pytest.mark.slow
def test_sweep_and_report_send_nothing_off_the_machine(mlflow_store, tmp_path):
    strace = _strace()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for key in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "RAY_USAGE_STATS_ENABLED",
                "RAY_ADDRESS", "http_proxy", "HTTP_PROXY"):
        env.pop(key, None)  # rnnsweep's own defaults are what is tested
    traces = []
    commands = [
        ["-m", "rnnsweep", "-m", *TOY, "batch=1,2", f"tracking.uri={mlflow_store.uri}",
         f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        ["-m", "rnnsweep.report", "--tracking-uri", mlflow_store.uri, "--experiment",
         "rnnsweep", "--no-log"],
    ]
    for i, args in enumerate(commands):
        out = tmp_path / f"trace-{i}.txt"
        proc = subprocess.run([strace, "-f", "-qq", "-e", "trace=connect,sendto",
                               "-e", "signal=none", "-o", str(out), sys.executable, *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        traces.append(out.read_text())
    text = "\n".join(traces)
    assert "connect(" in text  # strace saw the loopback traffic, so it saw everything
    assert outbound_attempts(text) == []
    assert len(mlflow_store.runs()) == 3


# --- Ray token authentication ------------------------------------------------------------


@pytest.fixture
def token_cluster(tmp_path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_TOKEN": "0123456789abcdef0123456789abcdef"}
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=1", "--include-dashboard=false",
         "--block"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("ray start did not come up")
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(proc)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["disabled", "token"])
def test_cluster_refusing_the_token_is_one_line(token_cluster, mode, mlflow_store, tmp_path):
    result = run_cli(["-m", *TOY, "batch=1", f"ray.address={token_cluster}",
                      f"tracking.uri={mlflow_store.uri}"], cwd=tmp_path, timeout=120,
                     extra_env={"RAY_AUTH_MODE": mode, "RAY_AUTH_TOKEN": "wrong" * 7})
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.splitlines()
    assert "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line
    assert token_cluster in line
    assert mlflow_store.runs() == []

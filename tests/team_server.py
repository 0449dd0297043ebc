"""A team's tracking server for real: PostgreSQL, and ``mlflow server`` on it with proxied
artifacts, both on 127.0.0.1 and stopped by the PIDs this module started.

PostgreSQL is Debian's (``postgresql-15``; its ``initdb`` and ``postgres`` are not on PATH).
It refuses to run as root, so as root its data directory belongs to ``nobody`` and the
server runs as that user (``subprocess.Popen(user=...)``: the PID is the postmaster's own,
not a ``su`` wrapper's). It listens on a free loopback port and on a Unix socket in its
own temp directory, with password (SCRAM) authentication over TCP, so a wrong password is
refused as on a team's server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120
UNPRIVILEGED = "nobody"
USER, DATABASE = "rnnsweep", "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``), newest first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found += [p for p in [shutil.which("initdb")] if p]
    return Path(found[0]).parent if found else None


def _env(root: Path) -> dict[str, str]:
    """No PG* settings of this shell, and a HOME the unprivileged user can read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"LC_ALL": "C.UTF-8", "HOME": str(root)})
    return env


def _as_user() -> dict:
    """Popen arguments that drop root to an unprivileged user; nothing when not root."""
    return {"user": UNPRIVILEGED, "group": "nogroup"} if os.geteuid() == 0 else {}


@dataclass
class Postgres:
    root: Path
    port: int
    password: str
    process: subprocess.Popen

    def uri(self, database: str = DATABASE, password: str | None = None,
            port: int | None = None) -> str:
        secret = self.password if password is None else password
        return (f"postgresql://{USER}:{secret}@127.0.0.1:{port or self.port}/{database}")

    def create_database(self, name: str) -> None:
        """Over the Unix socket, where the server trusts its own user (no password)."""
        subprocess.run([str(postgres_bin() / "psql"), "-h", str(self.root / "sock"), "-p",
                        str(self.port), "-U", USER, "-d", "postgres", "-c",
                        f"CREATE DATABASE {name}"],
                       check=True, capture_output=True, env=_env(self.root), **_as_user())

    def stop(self) -> None:
        """SIGINT is PostgreSQL's "fast shutdown": it ends its backends and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    binaries = postgres_bin()
    if binaries is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="rnnsweep-pg-"))
    os.chmod(root, 0o755)
    data, socket_dir = root / "data", root / "sock"
    password = secrets.token_hex(12)
    (root / "pwfile").write_text(password + "\n")
    socket_dir.mkdir()
    if os.geteuid() == 0:
        for path in (root, socket_dir, root / "pwfile"):
            shutil.chown(path, UNPRIVILEGED, "nogroup")
    env = _env(root)
    subprocess.run([str(binaries / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8",
                    "--auth-local=trust", "--auth-host=scram-sha-256",
                    f"--pwfile={root / 'pwfile'}"],
                   check=True, capture_output=True, env=env, cwd=root, **_as_user())
    (root / "pwfile").unlink()
    port = free_port()
    log = (root / "postgres.log").open("w")
    process = subprocess.Popen(
        [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(socket_dir), "-c", "max_connections=200", "-c", "fsync=off"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
        **_as_user())
    server = Postgres(root, port, password, process)
    try:
        _wait_postgres(server, binaries)
        server.create_database(DATABASE)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_postgres(server: Postgres, binaries: Path) -> None:
    ready = binaries / "pg_isready"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError("postgres exited: "
                               + (server.root / "postgres.log").read_text()[-2000:])
        if subprocess.run([str(ready), "-h", "127.0.0.1", "-p", str(server.port)],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise TimeoutError(f"postgres not ready in {START_TIMEOUT_S} s")


@dataclass
class MlflowServer:
    url: str
    artifacts: Path
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Its own session: ``mlflow server`` starts uvicorn below it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_mlflow_server(backend_uri: str, directory: Path, env: dict[str, str],
                        workers: int = 2) -> MlflowServer:
    """``mlflow server`` as the README's team section runs it: the database behind it, and
    artifacts proxied (``--artifacts-destination``), so clients never touch the artifact
    store. ``env`` is the server's environment (offline settings)."""
    port = free_port()
    artifacts = directory / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    log = directory / "mlflow-server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", artifacts, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"mlflow server not ready in {START_TIMEOUT_S} s: "
                       f"{log.read_text()[-3000:]}")

"""A real multi-node Ray cluster on 127.0.0.1: one ``ray start --block`` process per node.

Unlike ``ray.cluster_utils.Cluster``, the nodes are separate ``ray start`` processes, as
on real machines, each from a virtual environment of one of two kinds:

- ``bare``: a node as a team builds it from a stock image, a venv holding only torch and
  ``ray[default]`` of this driver's versions, nothing linked from this machine's
  environment: no rnnsweep, no Hydra, no OmegaConf, no MLflow. Building one takes about
  90 s (pip, from the local wheel mirror), so it is built once per (Python, torch, Ray)
  under ``~/.cache/rnnsweep-test-bare-node`` (``RNNSWEEP_BARE_NODE_CACHE`` moves it) and
  reused read-only after that.
- ``linked``: a fresh venv whose only link to this one is a ``.pth`` line naming this
  venv's site-packages. Everything but rnnsweep imports there (rnnsweep's
  editable-install ``.pth`` is never processed): the head node a team submits jobs to,
  whose driver (``ray job submit``) needs rnnsweep's own dependencies.

The cluster is started and stopped by the PIDs this module started (never Ray's own stop command,
which would stop every Ray on the machine). It uses its own temp dir, free ports, a
token of its own (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN``, not ``~/.ray``), and
a HOME holding a ``ray_bootstrap_config.yaml``: Ray's dashboard reads that file for its
cluster report and, without it, probes cloud metadata servers off the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from filelock import FileLock

# Environment that would tie the nodes to this checkout or to another Ray, or make them
# a single-node Ray: the local-only switch (which test modules that start an embedded Ray
# set for the whole session when they are collected) keeps a second node from joining.
_DROP_ENV = ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BARE_NODE_CACHE = Path(os.environ.get("RNNSWEEP_BARE_NODE_CACHE")
                       or Path.home() / ".cache" / "rnnsweep-test-bare-node")
BARE_NODE_INSTALL_TIMEOUT_S = 1800


def bare_node_venv() -> Path:
    """A venv with only torch and ``ray[default]``, this driver's versions; its python.

    Built on first use under a lock (sessions running at once build it once) and marked
    complete only when pip succeeded, so a build cut short is rebuilt, never half-used.
    """
    torch_version = metadata.version("torch").split("+", 1)[0]  # the index's CPU build
    ray_version = metadata.version("ray")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = BARE_NODE_CACHE / f"py{py}-torch{torch_version}-ray{ray_version}"
    python, ready = root / "bin" / "python", root / "rnnsweep-complete"
    BARE_NODE_CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock", timeout=BARE_NODE_INSTALL_TIMEOUT_S):
        if ready.is_file():
            return python
        shutil.rmtree(root, ignore_errors=True)
        started = time.monotonic()
        # Made by this venv's python, the new venv shares only its base interpreter: no
        # site-packages of this venv, none of the system's.
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-input",
             f"torch=={torch_version}", f"ray[default]=={ray_version}"],
            timeout=BARE_NODE_INSTALL_TIMEOUT_S, capture_output=True, text=True,
            env={k: v for k, v in os.environ.items() if k not in _DROP_ENV})
        if installed.returncode != 0:
            raise RuntimeError(f"building the bare node venv {root} failed: "
                               f"{installed.stderr[-3000:]}")
        ready.write_text(f"built in {time.monotonic() - started:.0f} s\n")
    return python


def linked_venv(root: Path) -> Path:
    """A venv that sees this venv's packages but not rnnsweep; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    Path(site.stdout.strip(), "host-packages.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return python


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class LoopbackCluster:
    root: Path
    python: Path
    env: dict[str, str]
    port: int
    dashboard_port: int | None
    nodes: list[Node] = field(default_factory=list)
    pythons: dict[str, Path] = field(default_factory=dict)  # venv kind -> its python

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def driver_env(self) -> dict[str, str]:
        """What a driver on this machine needs to join: the token, and no RAY_ADDRESS."""
        env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
        env.update({k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                             "RAY_USAGE_STATS_ENABLED")})
        return env

    def start_node(self, name: str, num_cpus: float, num_gpus: float, head: bool,
                   dashboard: bool = False, venv: str = "linked") -> None:
        log = self.root / f"{name}.log"
        python = self.pythons[venv]
        args = [str(python), "-m", "ray.scripts.scripts", "start", "--block",
                "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus:g}",
                f"--num-gpus={num_gpus:g}", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}",
                # A temp dir per node, as on separate machines: nodes sharing one would
                # share runtime_env packages, and one node's clean-up would delete
                # another's working directory.
                f"--temp-dir={self.root / ('ray-' + name)}"]
        if head:
            args += ["--head", f"--port={self.port}",
                     f"--ray-client-server-port={free_port()}"]
            if dashboard:
                args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={self.dashboard_port}"]
            else:
                args += ["--include-dashboard=false"]
        else:
            args += [f"--address={self.address}"]
        env = {**self.env, "PATH": f"{python.parent}{os.pathsep}{self.env.get('PATH', '')}"}
        with open(log, "w") as out:
            process = subprocess.Popen(args, cwd=self.root, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(Node(name, process, log))

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        probe = ("import ray, time\n"
                 f"ray.init(address='{self.address}', log_to_driver=False)\n"
                 f"while sum(n['Alive'] for n in ray.nodes()) < {count}: time.sleep(0.5)\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited: {node.log.read_text()}")
            try:
                subprocess.run([str(self.python), "-c", probe], env=self.env, check=True,
                               capture_output=True, timeout=max(5.0, deadline - time.monotonic()))
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes did not come up in {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM to each ``ray start --block`` (it then stops its own node's processes),
        SIGKILL to its process group if it lingers."""
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
        # Each node ran in a session of its own; sweep up anything its raylet left.
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)


def start_cluster(nodes: list[dict], dashboard: bool = False) -> LoopbackCluster:
    """``nodes``: one dict per node (``num_cpus``, ``num_gpus``, ``venv``: ``linked``, the
    default, or ``bare``); the first is the head."""
    # Short: Ray's Unix socket paths under its temp dir must stay under 108 characters.
    root = Path(tempfile.mkdtemp(prefix="rsc-", dir="/tmp"))
    python = linked_venv(root / "venv")
    pythons = {"linked": python}
    if any(spec.get("venv") == "bare" for spec in nodes):
        pythons["bare"] = bare_node_venv()
    home = root / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update({"HOME": str(home), "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"})
    cluster = LoopbackCluster(root, python, env, free_port(),
                              free_port() if dashboard else None, pythons=pythons)
    try:
        for i, spec in enumerate(nodes):
            cluster.start_node(f"node{i}", spec["num_cpus"], spec.get("num_gpus", 0),
                               head=i == 0, dashboard=dashboard,
                               venv=spec.get("venv", "linked"))
            if i == 0:
                cluster.wait_for_nodes(1)
        cluster.wait_for_nodes(len(nodes))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def remove(cluster: LoopbackCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)

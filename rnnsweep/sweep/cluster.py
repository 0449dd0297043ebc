"""The Ray a sweep runs on: an embedded local Ray on loopback, or a named cluster.

The CLI starts it as soon as the command line has been checked, so that Ray's start-up
and the workers' imports overlap the driver's own (MLflow, the store, composing the
trials); the sweep context then owns it and stops it as the sweep ends, overlapping the
report. Started any other way (Hydra's launcher API, a notebook), the launcher opens and
closes it around the sweep.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import re
import shutil
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
from omegaconf import DictConfig

from rnnsweep import privacy
from rnnsweep.adapters import ray_private
from rnnsweep.errors import Refused
from rnnsweep.sweep import interrupts
from rnnsweep.sweep.resources import LOCAL_ONLY_RAY_ENV, Node, cluster_address
from rnnsweep.sweep.shipping import ShippingError, check_nodes, runtime_env_for
from rnnsweep.text import first_line

log = logging.getLogger(__name__)


class LaunchError(Refused):
    pass


def connect(address: str | None, settings, config: DictConfig | None = None) -> None:
    """Connects to the named cluster (starting nothing), shipping the code its nodes need
    (``config``'s ``ray`` node says what), or starts an embedded local Ray bound to
    loopback and sized by the launcher's settings."""
    if address:
        connect_cluster(address, config)
        return
    if os.environ.get(LOCAL_ONLY_RAY_ENV) != "0":
        log.warning("the embedded Ray will listen beyond loopback: start rnnsweep through "
                    f"its CLI, or set {LOCAL_ONLY_RAY_ENV}=0 before importing ray")
    # "local": always a fresh instance, never a cluster someone started with `ray start`.
    temp_dir = private_temp_dir()
    with privacy.no_cloud_probes() as worker_env:
        context = ray.init(address="local", num_cpus=settings.num_cpus,
                           num_gpus=settings.num_gpus, include_dashboard=settings.dashboard,
                           dashboard_host=settings.dashboard_host, log_to_driver=False,
                           configure_logging=False,
                           runtime_env={"env_vars": worker_env} if worker_env else None,
                           **ray_private.temp_dir_option(temp_dir))
    _watch_raylet()
    url = getattr(context, "dashboard_url", None)
    if settings.dashboard and url:
        print(f"rnnsweep: {dashboard_notice(url)}", file=sys.stderr, flush=True)


# Ray's longest path below its temp dir is a Unix socket's, and a socket's path is limited
# to 107 bytes: session_<date>_<time>_<microseconds>_<pid>/sockets/plasma_store, with a
# numbered suffix where the name is taken, at the largest pid Linux hands out.
_SOCKET_TAIL = len("/ray/session_2026-12-06_06-41-28_870013_4194304/sockets/plasma_store.99")
_SOCKET_PATH_MAX = 107


def private_temp_dir() -> str:
    """A temp dir for the embedded Ray inside a directory only this user can enter.

    Ray makes its temp dir and every directory it creates there 0777 (``/tmp/ray`` and
    each session: logs, sockets, spilled objects), for machines where users share one
    Ray, and its other processes (the runtime env agent) do so again as they start. A
    sweep's Ray is its own: its temp dir is ``ray`` in ``rnnsweep-<uid>``, which is 0700
    and which Ray never touches, in the system temp dir Ray would use
    (``RAY_TMPDIR``, else ``TMPDIR``), or in ``/tmp`` where that is too long a path for
    Ray's sockets."""
    name = f"rnnsweep-{os.getuid()}"
    for base in (_system_temp_dir(), "/tmp"):
        path = os.path.join(os.path.abspath(base), name)
        if len(os.fsencode(path)) + _SOCKET_TAIL <= _SOCKET_PATH_MAX:
            _make_private(path)
            return os.path.join(path, "ray")
    raise LaunchError(f"no temp dir short enough for Ray's sockets: {path} is "
                      f"{len(os.fsencode(path))} bytes (set RAY_TMPDIR to a shorter path)")


def _system_temp_dir() -> str:
    """Where Ray would put its own ``ray`` directory."""
    return os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"


def _make_private(path: str, again: bool = True) -> None:
    """``path`` as a directory this user owns and nobody else can enter. One left by
    someone else (a link, another user's, a file) is refused; one of ours that others
    could have written into is made again, since what they left there cannot be trusted."""
    try:
        try:
            os.mkdir(path, 0o700)
            return
        except FileExistsError:
            pass
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or \
                info.st_uid != os.getuid():
            raise LaunchError(f"Ray's temp dir {path} is not a directory this user owns: "
                              "remove it, or set RAY_TMPDIR to a directory of your own")
        if stat.S_IMODE(info.st_mode) & 0o077:
            if not again:
                raise LaunchError(f"Ray's temp dir {path} is open to other users again")
            log.warning("Ray's temp dir %s was open to other users; made it again", path)
            shutil.rmtree(path)
            _make_private(path, again=False)
    except OSError as exc:
        raise LaunchError(f"cannot make Ray's temp dir {path}: {exc}") from None


def dashboard_notice(url: str) -> str:
    """Where the dashboard is and how to log in to it. Ray 2.60's dashboard asks for the
    cluster's token; the token itself is never printed (terminals end up in logs and
    screen shares), only where it is kept."""
    from rnnsweep.sweep.auth import AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV

    address = url if "://" in url else f"http://{url}"
    host = address.split("://", 1)[1].rsplit(":", 1)[0]
    where = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else \
        f"listening on {host}"
    if os.environ.get(AUTH_MODE_ENV, "token").lower() != "token":
        return f"Ray dashboard at {address} ({where}; no login: {AUTH_MODE_ENV} is off)"
    if os.environ.get(TOKEN_ENV):
        source = f"the value of {TOKEN_ENV} in this shell"
    elif os.environ.get(TOKEN_PATH_ENV):
        source = f"the contents of {os.environ[TOKEN_PATH_ENV]}"
    else:
        token_file = Path.home() / ".ray" / "auth_token"  # where Ray keeps (or made) it
        source = f"the contents of {token_file} (`ray get-auth-token` prints it)"
    return (f"Ray dashboard at {address} ({where}); it asks for Ray's token: paste "
            f"{source}")


def connect_cluster(address: str, config: DictConfig | None) -> None:
    check_reachable(address)
    try:
        runtime_env = runtime_env_for(config)
    except ShippingError as exc:
        raise LaunchError(str(exc)) from None
    try:
        # A copy: ray.init rewrites the paths in the dict it is given into package URIs.
        ray.init(address=address, runtime_env=copy.deepcopy(runtime_env), log_to_driver=False,
                 configure_logging=False)
    except Exception as exc:  # Ray raises several types for a bad address
        raise LaunchError(f"cannot connect to the Ray cluster at {address}: "
                          f"{first_line(str(exc), type(exc).__name__)}") from None
    if runtime_env:
        try:
            check_nodes(runtime_env)
        except ShippingError as exc:
            ray.shutdown()
            raise LaunchError(str(exc)) from None


def prewarm(workers: int) -> None:
    """Has ``workers`` of the embedded Ray's worker processes import the trial code now.

    A worker's first trial would otherwise spend seconds importing torch (and
    torch._dynamo, which torch.optim pulls in on first use) after the trial was
    submitted; started here, that work runs while the driver sets up MLflow. One-CPU
    tasks that run at the same time land on distinct workers, and Ray reuses those
    workers for the trials that follow.
    """
    for _ in range(workers):
        _import_trial_code.remote()


# Never retried: a warm-up is worth nothing twice, and Ray retries a task its memory
# monitor killed without end (task_oom_retries=-1) whenever the task may be retried at
# all, holding a CPU that trials wait for and printing a page to the terminal each time.
@ray.remote(num_cpus=1, max_retries=0)
def _import_trial_code() -> None:
    import torch._dynamo  # noqa: F401

    import rnnsweep.trial.run  # noqa: F401


@dataclass(frozen=True)
class OutOfMemory:
    """What Ray's memory monitor said when it killed a trial's worker."""

    worker_gb: float | None  # the worker's memory when killed: the trial's peak
    node: str  # the node's use against its limit and the monitor's threshold

    @property
    def reason(self) -> str:
        worker = f" using {self.worker_gb:g} GB" if self.worker_gb is not None else ""
        return f"out of memory: Ray's memory monitor killed its worker{worker} ({self.node})"


def out_of_memory(error: BaseException) -> OutOfMemory | None:
    """The kill, if ``error`` is Ray's memory monitor's. Ray's message (a page) names
    the process it chose and its memory, and the node's use and threshold."""
    if not isinstance(error, ray.exceptions.OutOfMemoryError):
        return None
    text = str(error)
    worker = re.search(r"actual memory used=([\d.]+)GB", text)
    node = re.search(r"was ([\d.]+)GB used / ([\d.]+)GB limit", text)
    threshold = re.search(r"threshold of \d+B \(([\d.]+%)", text)
    said = f"the node at {node[1]} of {node[2]} GB" if node else "the node short of memory"
    if threshold:
        said += f", over its {threshold[1]} threshold"
    return OutOfMemory(float(worker[1]) if worker else None, said)


@contextmanager
def ray_session(config: DictConfig, settings) -> Iterator[list[Node]]:
    """Yields the cluster's nodes. A Ray that is already connected (the CLI's, a test's
    cluster, a notebook's) is used as it is and left running."""
    if ray.is_initialized():
        yield nodes()
        return
    connect(cluster_address(config), settings, config)
    try:
        yield nodes()
    finally:
        shutdown().join()


def shutdown() -> threading.Thread:
    """Stops Ray in a thread (it mostly waits for Ray's processes to exit), keeping this
    process's signal handlers, which Ray's shutdown resets; its raylet's exit is no loss."""
    _watching.set()
    return interrupts.keeping_handlers(ray.shutdown, "ray-shutdown")


# Set while no raylet is watched: before the embedded Ray starts and once it is stopped.
_watching = threading.Event()
_watching.set()
WATCH_S = 0.5


def _watch_raylet() -> None:
    """Watches the embedded Ray's raylet, this process's child. Without it a sweep does
    not end when its raylet dies: the trials' streams just fall silent, and tens of
    seconds later Ray's core worker ends this process (exit 1) as it reaches for the
    raylet's object store, leaving the sweep's runs RUNNING and no summary. Seen dead,
    the sweep ends at once as a signal ends it (interrupts.Lost), while the store and
    the terminal still answer."""
    pid = _child_named("raylet")
    if pid is None:
        log.warning("no raylet among this process's children: its loss goes unwatched")
        return
    _watching.clear()
    atexit.register(_watching.set)  # before Ray's own atexit shutdown, which runs later

    def watch() -> None:
        while not _watching.wait(WATCH_S):
            if not _alive(pid):
                if not _watching.is_set() and ray.is_initialized():  # not a shutdown
                    interrupts.lose(f"Ray's raylet (pid {pid}) died mid-sweep")
                return

    threading.Thread(target=watch, name="raylet-watch", daemon=True).start()


def _child_named(name: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command, _, rest = (entry / "stat").read_text().partition(") ")
        except OSError:
            continue
        if command.endswith(f"({name}") and int(rest.split()[1]) == os.getpid():
            return int(entry.name)
    return None


def _alive(pid: int) -> bool:
    """A dead child stays a zombie until Ray reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def nodes() -> list[Node]:
    return [Node(n["NodeID"], n.get("NodeManagerAddress", "?"), n["Resources"].get("CPU", 0.0),
                 n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]


def check_reachable(address: str) -> None:
    """Ray retries a dead address for a long time; a plain TCP probe answers at once."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    from rnnsweep.sweep.auth import token_problem

    if problem := token_problem(address):
        raise LaunchError(f"cannot connect to the Ray cluster at {address}: {problem}")

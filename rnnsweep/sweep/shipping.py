"""What a named cluster's nodes get from the driver: rnnsweep's code and the user's.

Ray's ``runtime_env`` uploads local directories to the cluster and unpacks them on each
node before a worker starts, so a node needs only Python, Ray and torch: rnnsweep, its
Hydra launcher shim and what the trial side imports beyond torch and Ray (Hydra,
OmegaConf and their own dependencies: the driver's installed copies, so the nodes run
the driver's versions) travel as ``py_modules``; the user's code travels as a
``working_dir`` (``ray.working_dir``) or as packages named by import name
(``ray.packages``). The embedded local Ray shares this machine's environment and gets
nothing.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from functools import cache
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnnsweep.errors import Refused

# Set by Ray's job manager in a submitted job's driver: the job's own runtime_env.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Never worth uploading from a working directory: stores, outputs, environments, VCS.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", "mlflow.db", "mlruns",
            "multirun", "outputs", "*.egg-info"]
# The distributions a trial imports besides torch and Ray (rnnsweep.sweep.worker and the
# launcher shim: Hydra's job runner, OmegaConf's configs). Their own requirements travel
# with them, less what a node with torch and ray[default] has already (PyYAML, packaging).
TRIAL_DISTRIBUTIONS = ("hydra-core", "omegaconf")
PLUGIN_PREFIX = "rnnsweep_"  # rnnsweep's own packages in Hydra's hydra_plugins namespace
NODE_DISTRIBUTIONS = ("torch", "ray[default]")
# What a node imports to run a trial, by name: the shim sits above this module, which
# must find it (and ship it) without importing it.
LAUNCHER_SHIM = "hydra_plugins.rnnsweep_launcher"
TRIAL_MODULES = (f"{LAUNCHER_SHIM}.rnnsweep_launcher", "rnnsweep.sweep.worker")


class ShippingError(Refused):
    """A one-line, user-facing error about what should travel to the cluster."""


def runtime_env_for(config: DictConfig | None) -> dict | None:
    """The ``runtime_env`` for ``ray.init`` on a named cluster, from the ``ray`` config
    (``ray.ship``, ``ray.working_dir``, ``ray.packages``); None when nothing travels."""
    ray_cfg = OmegaConf.select(config, "ray") if config is not None else None
    if ray_cfg is None or not OmegaConf.select(ray_cfg, "ship", default=True):
        return None
    modules = [_rnnsweep_dir(), _launcher_shim_dir(), *trial_dependency_dirs()]
    modules += [_package_dir(name) for name in OmegaConf.select(ray_cfg, "packages") or []]
    env: dict = {"py_modules": [str(m) for m in modules], "excludes": EXCLUDES}
    working_dir = OmegaConf.select(ray_cfg, "working_dir")
    if working_dir:
        path = Path(str(working_dir)).expanduser().resolve()
        if not path.is_dir():
            raise ShippingError(f"ray.working_dir={working_dir}: not a directory")
        env["working_dir"] = str(path)
    return _without_job_keys(env)


def _without_job_keys(env: dict) -> dict | None:
    """Inside ``ray job submit``, the job's own ``runtime_env`` is merged with this one key
    by key, and Ray refuses a key set twice. The job's working directory (usually the
    checkout) wins over ``ray.working_dir``; the ``py_modules`` still travel, because a
    node with only torch and Ray lacks Hydra and OmegaConf whatever the job uploaded. A job
    that set ``py_modules`` itself chose what travels: nothing is added to it."""
    job = json.loads(os.environ.get(JOB_CONFIG_ENV, "{}") or "{}")
    job_env = {k: v for k, v in (job.get("runtime_env") or {}).items() if v}
    if "py_modules" in job_env:
        return None
    return {k: v for k, v in env.items() if k not in job_env}


def _rnnsweep_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def _launcher_shim_dir() -> Path:
    """``hydra_plugins`` holding only rnnsweep's own plugins (its launcher shim, its
    sweeper: a sweep's Hydra state names their config classes, so a node unpickling it
    imports them). An installed namespace directory may hold other plugins, which have no
    business on the nodes: those get a copy of rnnsweep's alone (Ray uploads it during
    ``ray.init``; the copy goes when this process does)."""
    spec = importlib.util.find_spec(LAUNCHER_SHIM)
    if spec is None or spec.origin is None:
        raise ShippingError(f"{LAUNCHER_SHIM} is not installed beside rnnsweep; "
                            "reinstall rnnsweep")
    source = Path(spec.origin).resolve().parent.parent
    ours = sorted(p for p in source.iterdir() if p.name.startswith(PLUGIN_PREFIX) and p.is_dir())
    if {p.name for p in source.iterdir()} <= {p.name for p in ours} | {"__pycache__"}:
        return source
    staging = Path(tempfile.mkdtemp(prefix="rnnsweep-ship-")) / "hydra_plugins"
    atexit.register(shutil.rmtree, staging.parent, True)
    for plugin in ours:
        shutil.copytree(plugin, staging / plugin.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return staging


@cache
def trial_dependency_dirs() -> tuple[Path, ...]:
    """The installed top-level packages of ``TRIAL_DISTRIBUTIONS`` and their requirements
    that a node with only ``NODE_DISTRIBUTIONS`` lacks (for Hydra 1.3: hydra, omegaconf,
    antlr4; about 2 MB, uploaded once and cached by Ray by content), as staged copies."""
    needed = _closure(TRIAL_DISTRIBUTIONS) - _closure(NODE_DISTRIBUTIONS)
    installed = [path for name in sorted(needed) for path in _top_level_paths(name)]
    return tuple(_staged(installed))


def _staged(paths: list[Path]) -> list[Path]:
    """Copies of installed packages without their ``.gitignore`` files: Ray leaves out
    what a ``.gitignore`` inside an uploaded directory names, and Hydra's wheel carries
    one that names its own generated grammar parsers (a node then fails with "Error
    importing generated parsers"). The copies go when this process does."""
    staging = Path(tempfile.mkdtemp(prefix="rnnsweep-ship-deps-"))
    atexit.register(shutil.rmtree, staging, True)
    copies = []
    for path in paths:
        copy = staging / path.name
        if path.is_dir():
            shutil.copytree(path, copy, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", ".gitignore"))
        else:
            shutil.copy2(path, copy)
        copies.append(copy)
    return copies


def _closure(requirements: tuple[str, ...]) -> set[str]:
    """Normalised names of the installed distributions ``requirements`` pull in."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing of it to ship (nor needed by it)
        seen.add(name)
        for text in dist.requires or []:
            sub = Requirement(text)
            extras = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return seen


def _top_level_paths(name: str) -> list[Path]:
    """The installed import packages (and single modules) of distribution ``name``."""
    dist = metadata.distribution(name)
    tops = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first in ("..", "__pycache__") or first.endswith((".dist-info", ".egg-info",
                                                            ".data", ".pth")):
            continue
        if len(file.parts) > 1 or first.endswith(".py"):
            tops.add(first)
    # locate_file is typed as importlib's SimplePath, which need not be os.PathLike.
    return sorted(Path(str(dist.locate_file(top))).resolve() for top in tops)


def _package_dir(name: str) -> Path:
    """A user's package by import name, as the directory Ray uploads."""
    try:
        module = importlib.import_module(str(name))
    except ImportError as exc:
        raise ShippingError(f"ray.packages: cannot import {name!r} here to ship it: "
                            f"{exc}") from None
    paths = list(getattr(module, "__path__", []))
    if paths:
        return Path(paths[0]).resolve()
    if module.__file__:  # a single-file module
        return Path(module.__file__).resolve()
    raise ShippingError(f"ray.packages: {name!r} has no files to ship")


def check_nodes(runtime_env: dict, timeout_s: float = 180.0) -> None:
    """Builds the runtime environment on every node now, with one tiny task per node that
    imports what a trial imports, so a node that cannot build it is named up front
    rather than failing each trial that lands there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_import_trial_side)
    modules = [Path(m).stem for m in runtime_env.get("py_modules", [])]
    refs = {}
    for node in ray.nodes():
        if node.get("Alive"):
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ref = probe.options(scheduling_strategy=strategy).remote(modules)
            refs[ref] = f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RuntimeEnvSetupError as exc:
            raise ShippingError(f"node {refs[ref]} cannot build the runtime environment: "
                                f"{_reason(exc)}") from None
        except ray.exceptions.RayError as exc:
            raise ShippingError(f"node {refs[ref]} cannot import the trial code: "
                                f"{_reason(exc)}") from None
    if pending:
        raise ShippingError(f"node {refs[pending[0]]} did not start a worker with the "
                            f"runtime environment within {timeout_s:g} s")


def _import_trial_side(modules: list[str]) -> None:
    for name in (*TRIAL_MODULES, *modules):
        importlib.import_module(name)


def _reason(exc: BaseException) -> str:
    """The last meaningful line of Ray's multi-line error: the cause, not the banner."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else
                type(exc).__name__)

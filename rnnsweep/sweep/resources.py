"""What each trial asks Ray for, and whether any node can give it.

Pure functions over a trial's config and the cluster's node list, so the policy can be
read and tested without Ray.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from rnnsweep.contract import RAY_GPU_COTENANTS_TAG, RAY_GPU_IDS_TAG, RAY_GPU_SHARED_TAG, to_tag
from rnnsweep.errors import Refused

# Ray's local-only mode (read when ray is imported) keeps an embedded Ray on loopback.
LOCAL_ONLY_RAY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def cluster_address(config: DictConfig) -> str | None:
    """The Ray cluster the user named (``ray.address`` or ``RAY_ADDRESS``), or None for
    an embedded local Ray."""
    return OmegaConf.select(config, "ray.address") or os.environ.get("RAY_ADDRESS") or None


class InfeasibleRequest(Refused):
    pass


@dataclass(frozen=True)
class Request:
    device: str  # "cpu" | "cuda"
    num_cpus: float
    num_gpus: float
    exclusive: bool

    def describe(self) -> str:
        return f"CPU={self.num_cpus:g}, GPU={self.num_gpus:g}"


@dataclass(frozen=True)
class Node:
    node_id: str
    address: str
    cpus: float
    gpus: float


def plan(cfg: DictConfig, nodes: list[Node]) -> Request:
    """A trial's resource request from its own ``hardware`` and ``workload`` config.

    Trials that measure time get a whole device by default: every CPU of a node for CPU
    trials, a whole GPU for GPU trials. Training-only trials pack. A trial that asks for
    a fraction of a GPU (``hardware=shared_gpu``) has asked to share.
    """
    hardware = OmegaConf.select(cfg, "hardware")
    if hardware is None:  # not an rnnsweep trial (any Hydra app can use this launcher)
        return Request("cpu", 1.0, 0.0, False)
    timed = bool(OmegaConf.select(cfg, "workload.bench", default=False)
                 or OmegaConf.select(cfg, "workload.deploy", default=False))
    exclusive = timed if hardware.exclusive is None else bool(hardware.exclusive)
    device = str(hardware.device)
    if device == "auto":
        # GPUs asked for by number are a request, not a preference: on nodes without
        # them it is refused (check_feasible), never quietly run on CPU.
        device = "cuda" if hardware.num_gpus or any(n.gpus > 0 for n in nodes) else "cpu"
    if device == "cpu":
        whole_node = max((n.cpus for n in nodes), default=1.0)
        cpus = hardware.num_cpus or (whole_node if exclusive else 1.0)
        return Request("cpu", float(cpus), 0.0, exclusive)
    gpus = float(hardware.num_gpus) or 1.0
    if exclusive:
        gpus = max(gpus, 1.0)
    return Request("cuda", float(hardware.num_cpus or 1.0), gpus, exclusive)


def check_feasible(requests: dict[int, Request], nodes: list[Node],
                   names: dict[int, str]) -> None:
    """Fails up front rather than leaving a trial pending forever."""
    for idx, req in requests.items():
        if not any(n.cpus >= req.num_cpus and n.gpus >= req.num_gpus for n in nodes):
            sizes = ", ".join(f"{n.address}: CPU={n.cpus:g} GPU={n.gpus:g}" for n in nodes)
            hint = ("; this cluster has no GPUs: use hardware=cpu or a cluster with GPUs"
                    if req.num_gpus and not any(n.gpus for n in nodes) else "")
            raise InfeasibleRequest(
                f"trial #{idx} ({names[idx]}) asks for {req.describe()} but no Ray node has "
                f"that (nodes: {sizes or 'none'}){hint}")


def concurrent_trials(requests: list[Request], nodes: list[Node]) -> int:
    """How many of these trials can run at once: as many of the smallest request as fit
    on every node, and never more than there are trials."""
    if not requests:
        return 0
    smallest = min(requests, key=lambda r: (r.num_gpus, r.num_cpus))
    fit = 0
    for node in nodes:
        by_cpu = node.cpus // smallest.num_cpus if smallest.num_cpus else len(requests)
        by_gpu = node.gpus // smallest.num_gpus if smallest.num_gpus else len(requests)
        fit += int(min(by_cpu, by_gpu))
    return min(len(requests), fit)


def ran_between(info: dict, begin: float, end: float) -> bool:
    """Whether a trial (``info``: its ``started`` time, and ``finished`` once known) ran at
    some moment between ``begin`` and ``end``."""
    started, finished = info.get("started"), info.get("finished")
    return started is not None and started < end and (finished is None or finished > begin)


def gpu_tags(info: dict, neighbours: list[dict], end: float) -> dict[str, str]:
    """The GPU ids Ray granted a trial and who shared them: the other trials on the same
    node holding one of those ids at some moment while this one ran (``info`` and each
    neighbour: ``node_id``, ``gpu_ids``, ``started``, and ``finished`` once known)."""
    ids = set(info.get("gpu_ids") or [])
    if not ids:
        return {}
    begin = info.get("started") or 0.0
    sharing = [n for n in neighbours
               if n.get("node_id") == info.get("node_id") and ids & set(n.get("gpu_ids") or [])
               and ran_between(n, begin, end)]
    return {RAY_GPU_IDS_TAG: ",".join(sorted(ids)),
            RAY_GPU_COTENANTS_TAG: to_tag(len(sharing)),
            RAY_GPU_SHARED_TAG: to_tag(bool(sharing))}

"""Time to first trial on a fresh node that has only Python, torch and Ray (issue 21, item 1).

Starts a fresh loopback cluster (tests/loopback_cluster.py) of one ``ray start`` node whose
venv holds only torch and ``ray[default]`` (built once, cached under
``~/.cache/rnnsweep-test-bare-node``; the build's own time is printed when it happens),
then runs the same sweep twice, as a user runs it:

    python -m rnnsweep -m batch=1,2 workload=train steps=2 hardware.num_cpus=1 ray.address=...

The first run finds the node fresh: Ray unpacks the shipped code (rnnsweep, its Hydra
plugins, and the driver's Hydra, OmegaConf and antlr4) and starts workers that import
them; the second finds the packages cached by content. Reported for each: the wall time
of the command and the time from its launch to the first trial's start (the earliest
child run's start time), and that both trials were recorded OK.

    python benchmarks/bare_node.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_cli, toy  # noqa: E402
from loopback_cluster import BARE_NODE_CACHE, bare_node_venv, remove, start_cluster  # noqa: E402


def sweep(cluster, tmp: Path, name: str) -> tuple[float, float, list[str]]:
    uri = f"sqlite:///{tmp}/{name}.db"
    args = ["-m", *toy("workload=train", "steps=2", "hardware.num_cpus=1"), "batch=1,2",
            f"ray.address={cluster.address}", f"tracking.uri={uri}",
            f"hydra.sweep.dir={tmp}/multirun-{name}"]
    log_path = tmp / f"{name}.log"
    with log_path.open("w") as log:
        launched = time.time()
        proc = start_cli(args, tmp, cluster.driver_env(), merge_output=True, stdout=log)
        proc.wait(timeout=900)
        wall = time.time() - launched
    if proc.returncode != 0:
        raise SystemExit(f"sweep {name} exited {proc.returncode}:\n"
                         f"{log_path.read_text()[-3000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rnnsweep").experiment_id
    children = [r for r in client.search_runs([experiment])
                if r.data.tags.get("mlflow.parentRunId")]
    first = min(r.info.start_time for r in children) / 1000 - launched
    return wall, first, sorted(r.data.tags.get("rnnsweep.outcome", "?") for r in children)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    opts = parser.parse_args()
    started = time.monotonic()
    python = bare_node_venv()
    print(f"bare node venv: {python.parents[1]} (cache {BARE_NODE_CACHE}; ready after "
          f"{time.monotonic() - started:.1f} s)", flush=True)
    for repeat in range(opts.repeats):
        cluster = start_cluster([{"num_cpus": 2, "venv": "bare"}])
        try:
            with tempfile.TemporaryDirectory(prefix="rnnsweep-bare-bench-") as tmp:
                for name in ("fresh", "warm"):
                    wall, first, outcomes = sweep(cluster, Path(tmp), name)
                    print(f"repeat {repeat + 1}: {name:<5} node: first trial started "
                          f"{first:5.1f} s after launch, command {wall:5.1f} s, "
                          f"outcomes {outcomes}", flush=True)
        finally:
            remove(cluster)


if __name__ == "__main__":
    main()

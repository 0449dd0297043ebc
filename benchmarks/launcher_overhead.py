"""Ray launcher against Hydra's basic launcher, measured side by side in one run.

(a) A sweep of 8 one-CPU training trials of about 3 s each: wall-time ratio, basic / Ray
    (target: Ray at least 1.7x faster on 2 cores).
(b) The fixed cost of a tiny 4-trial sweep: Ray wall time minus basic wall time
    (target: under 5 s extra).

Each measurement is a whole `python -m rnnsweep -m ...` process, as a user runs it, with
its own fresh store. Variants are interleaved (ABAB...) and medians reported.

    python benchmarks/launcher_overhead.py [--repeats 2] [--steps 25]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

TOY = ["model.input_size=8", "model.hidden_size=16", "seq_len=10", "steps=3", "warmup=1",
       "min_run_time=0.05"]
LAUNCHERS = {"ray": [], "basic": ["hydra/launcher=basic"]}


def wall(args: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="rnnsweep-bench-") as tmp:
        cmd = [sys.executable, "-m", "rnnsweep", "-m", *args,
               f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweep.dir={tmp}/multirun"]
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(args)}):\n{done.stderr[-2000:]}")
    return elapsed


def measure(args: list[str], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    for _ in range(repeats):
        for name, extra in LAUNCHERS.items():
            times[name].append(wall([*args, *extra]))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25,
                        help="training steps per trial (about 3 s at the default shapes)")
    opts = parser.parse_args()

    training = ["workload=train", "hardware.num_cpus=1", f"steps={opts.steps}", "seed=range(8)"]
    a = measure(training, opts.repeats)
    b = measure([*TOY, "batch=1,2,3,4"], opts.repeats)
    print(f"medians of {opts.repeats} interleaved runs, whole CLI processes, wall seconds")
    print(f"{'measurement':<44}{'ray':>8}{'basic':>8}{'result':>12}  target")
    print(f"{'(a) 8 one-CPU training trials':<44}{a['ray']:>8.1f}{a['basic']:>8.1f}"
          f"{a['basic'] / a['ray']:>11.2f}x  >= 1.7x faster with Ray")
    print(f"{'(b) tiny 4-trial sweep, fixed cost':<44}{b['ray']:>8.1f}{b['basic']:>8.1f}"
          f"{b['ray'] - b['basic']:>+11.1f}s  < 5 s extra with Ray")


if __name__ == "__main__":
    main()

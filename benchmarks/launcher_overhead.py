"""Ray launcher against Hydra's basic launcher, measured side by side in one run.

(a) A sweep of 8 one-CPU training trials of about 3 s each: wall-time ratio, basic / Ray
    (target: Ray at least 1.7x faster on 2 cores).
(b) The fixed cost of a tiny 4-trial sweep: Ray wall time minus basic wall time
    (target: under 5 s extra).

Each measurement is a whole `python -m rnnsweep -m ...` process, as a user runs it, with
its own fresh store. Variants are interleaved (ABAB...) and medians reported.

    python benchmarks/launcher_overhead.py [--repeats 2] [--steps 17] [--only a|b]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TOY, run_cli  # noqa: E402  (the tests' toy sizes and CLI runner)

LAUNCHERS = {"ray": [], "basic": ["hydra/launcher=basic"]}


def wall(args: list[str]) -> tuple[float, float]:
    """The sweep's wall time, and the median training time of its trials (from the store)."""
    with tempfile.TemporaryDirectory(prefix="rnnsweep-bench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        cmd = ["-m", *args, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp}/multirun"]
        started = time.perf_counter()
        done = run_cli(cmd, Path(tmp), timeout=3600)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"sweep failed ({' '.join(args)}):\n{done.stderr[-2000:]}")
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("rnnsweep").experiment_id])
        train_s = [r.data.metrics["step_time_ms"] * int(r.data.params["steps"]) / 1000
                   for r in runs if "step_time_ms" in r.data.metrics]
    return elapsed, statistics.median(train_s) if train_s else 0.0


def measure(args: list[str], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """Per launcher, one (wall time, training time per trial) pair per repeat."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in LAUNCHERS}
    for _ in range(repeats):
        for name, extra in LAUNCHERS.items():
            times[name].append(wall([*args, *extra]))
    return times


def walls(samples: list[tuple[float, float]]) -> str:
    return " ".join(f"{w:.1f}" for w, _ in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    # 17 steps at the default shapes train for about 3 s on the 2-core box this was
    # written on; the script prints the training time it actually measured.
    parser.add_argument("--steps", type=int, default=17,
                        help="training steps per trial")
    parser.add_argument("--only", choices=("a", "b", "ab"), default="ab",
                        help="run only measurement (a) or (b)")
    opts = parser.parse_args()

    training = ["workload=train", "hardware.num_cpus=1", f"steps={opts.steps}", "seed=range(8)"]
    a = measure(training, opts.repeats) if "a" in opts.only else None
    b = measure([*TOY, "batch=1,2,3,4"], opts.repeats) if "b" in opts.only else None
    # Each repeat runs Ray and basic back to back, so the paired ratio or difference
    # cancels the machine's drift between repeats; its median is the result.
    print(f"{opts.repeats} interleaved repeats, whole CLI processes, wall seconds "
          "(median, then every run)")
    print(f"{'measurement':<38}{'ray':>8}{'basic':>8}{'result':>10}  target")
    if a:
        pairs = zip(a["ray"], a["basic"], strict=True)
        ratio = statistics.median(bs / rs for (rs, _), (bs, _) in pairs)
        print(f"{'(a) 8 one-CPU training trials':<38}{_median(a['ray']):>8.1f}"
              f"{_median(a['basic']):>8.1f}{ratio:>9.2f}x  >= 1.7x faster with Ray")
        print(f"    runs: ray {walls(a['ray'])} | basic {walls(a['basic'])}")
        train = statistics.median(t for _, t in a["ray"] + a["basic"])
        print(f"    training time per trial (steps x step_time_ms, median): {train:.2f} s")
    if b:
        pairs = zip(b["ray"], b["basic"], strict=True)
        extra = statistics.median(rs - bs for (rs, _), (bs, _) in pairs)
        print(f"{'(b) tiny 4-trial sweep, fixed cost':<38}{_median(b['ray']):>8.1f}"
              f"{_median(b['basic']):>8.1f}{extra:>+9.1f}s  < 5 s extra with Ray")
        print(f"    runs: ray {walls(b['ray'])} | basic {walls(b['basic'])}")


def _median(samples: list[tuple[float, float]]) -> float:
    return statistics.median(w for w, _ in samples)


if __name__ == "__main__":
    main()

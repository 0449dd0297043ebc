"""Issue 19's search benchmark, part (c): Optuna TPE with a pruner at the same trial count
as the full grid, on `char_lm` (learning rate by width), against (a) the full grid.

Each variant is a whole `python -m rnnsweep -m ...` process with its own fresh store, run
side by side (A1 B1 A2 B2 ...). Reported per variant: best validation bits per character,
total trial-steps (a stopped trial counts the steps it ran) and the sweep's wall time.
The grid with ASHA (b) and Ray Tune (d) are the launcher's part of the issue.

    python benchmarks/search_optuna.py [--repeats 1] [--steps 300] [--pruner successive_halving]
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
from conftest import run_cli  # noqa: E402  (the tests' CLI runner)

LRS = (0.0003, 0.001, 0.003, 0.01)
WIDTHS = (32, 64, 96, 128)  # 4 x 4 = 16 trials
METRIC = "best_val_bits_per_char"  # what is reported
# What the search optimises and the pruner judges: the training bits per character, which
# trials report live at every step (the held-out values arrive only with the record).
OBJECTIVE = "bits_per_char"


def common(steps: int) -> list[str]:
    return ["task=char_lm", "model.input_size=80", "workload=train", f"steps={steps}",
            f"eval_every={max(steps // 10, 1)}", "seq_len=50", "batch=16",
            "hardware.num_cpus=1", f"objective.metric={OBJECTIVE}"]


def variants(steps: int, pruner: str) -> dict[str, list[str]]:
    n = len(LRS) * len(WIDTHS)
    return {
        "grid": [f"task.lr={','.join(map(str, LRS))}",
                 f"model.hidden_size={','.join(map(str, WIDTHS))}"],
        f"optuna-tpe+{pruner}": [
            "hydra/sweeper=rnnsweep_optuna", f"hydra.sweeper.n_trials={n}",
            "hydra.sweeper.n_jobs=2", f"hydra.sweeper.pruner={pruner}", "hydra.sweeper.seed=0",
            "hydra.sweeper.n_startup_trials=4",
            f"task.lr=choice({','.join(map(str, LRS))})",
            f"model.hidden_size=choice({','.join(map(str, WIDTHS))})"],
    }


def measure(args: list[str], steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rnnsweep-search-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        started = time.perf_counter()
        done = run_cli(["-m", *args, *common(steps), f"tracking.uri={uri}",
                        f"hydra.sweep.dir={tmp}/multirun"], Path(tmp), timeout=7200)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"sweep failed ({' '.join(args)}):\n{done.stderr[-3000:]}")
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("rnnsweep").experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        trial_steps = sum(int(r.data.tags.get("rnnsweep.stopped_at_step", steps))
                          for r in children)
        finished = [r.data.metrics[METRIC] for r in children
                    if r.data.tags.get("rnnsweep.outcome") == "OK" and METRIC in r.data.metrics]
        return {"best": min(finished) if finished else float("nan"),
                "trial_steps": trial_steps, "runs": len(children), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pruner", default="successive_halving")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.repeats):  # interleaved: this machine's speed drifts
        for name, overrides in variants(args.steps, args.pruner).items():
            results.setdefault(name, []).append(measure(overrides, args.steps))
            print(name, results[name][-1], flush=True)
    print(f"\n| variant | best {METRIC} | trial-steps | child runs | wall s |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"| {name} | {med['best']:.4f} | {med['trial_steps']:.0f} | {med['runs']:.0f} | "
              f"{med['wall_s']:.1f} |")


if __name__ == "__main__":
    main()

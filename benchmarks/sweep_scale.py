"""How a sweep's cost grows with its number of trials (issue #9, item 4).

Runs ``python -m rnnsweep -m 'seed=range(N)' steps=1 workload=train`` at toy sizes, as a
user runs it (a whole CLI process, the default Ray launcher, the embedded Ray), each time
on a fresh SQLite store in a temp dir, and reports per N:

- wall time of the whole command;
- that every trial was recorded (N FINISHED child runs under one FINISHED parent);
- the driver's resident memory over time, polled from ``/proc/<pid>/status`` of the CLI
  process this script started: peak (VmHWM), and the growth over the middle half of the
  run (RSS at 75% of the wall time minus RSS at 25%), which leaves out the closing
  report (on a short sweep it still includes the start-up's imports);

then, between sizes, the marginal cost per trial, (wall(N_big) - wall(N_small)) /
(N_big - N_small), per repeat, and its median; and the driver's memory per trial, the
same difference of peak RSS, which the start-up does not confound (flat memory: about
0 KB per trial). Sizes alternate within each repeat (16, 64, 16, 64, ...) so that drift
in the machine's load hits both. Target (issue #9): <= 0.1 s per trial.

    python benchmarks/sweep_scale.py [--sizes 16 64] [--repeats 3] [--timeout 1800]
    python benchmarks/sweep_scale.py --sizes 64 1000 --repeats 1

Measured 2026-11-27 on this 2-core machine with
``python benchmarks/sweep_scale.py --sizes 64 1000 --repeats 1`` (single runs: wall times
drift 10-20% between runs here):

    round 2, first session (loaded machine, load average 3-8):
      0438d98  marginal 0.170 s/trial, driver peak RSS +420 KB/trial (N=1000: 183.8 s)
      3f777e5  marginal 0.148 s/trial, driver peak RSS  +97 KB/trial (N=1000: 156.0 s)
    round 2, second session (quiet machine, load average 1-2):
      979867c  marginal 0.087 s/trial, +74 KB/trial (N=1000:  97.9 s, peak 411.5 MB)
      b29df8d  marginal 0.062 s/trial, +67 KB/trial (N=1000:  72.4 s; workers set
               Hydra's singletons once per sweep, not once per trial)
      9cc4e64  marginal 0.052 s/trial, +58 KB/trial (N=1000:  63.1 s; the close reads
               the runs once, in pages of 25)
      (next)   marginal 0.048 s/trial, +53 KB/trial (N=1000:  56.7 s; jobs go to the
               workers as their values)
      (last)   marginal 0.052 s/trial, +44 KB/trial (N=1000:  61.1 s, peak 377.8 MB,
               RSS growth mid-run +10.7 MB; two malloc arenas, free pages handed back
               every 100 trials)

    round 2, third session (RSS at 25% -> 90% of the wall time: the trials; the peak
    adds the close):
      e86bd80  +44 KB/trial (N=1000: peak 377.8 MB)
      45f740a  +29 KB/trial (N=1000: peak 364.6 MB; the close read every run into one
               list first, 20 MB of MLflow objects; a bar per trial drawn as a Rectangle
               each, 25 MB at N=1200)
      9fa29b4  +22 KB/trial (N=1000: 308.1 -> 319.2 MB, peak 357.5; free pages handed
               back every 20 trials: every 100 left a 9 MB saw-tooth)
      25104cc  +14 KB/trial (N=1000: 306.8 -> 308.6 MB, peak 349.7; one Ray task name for
               every trial: Ray's driver keeps 6.5 KB per task name for good)
      (last)   +10 KB/trial, marginal 0.078 s/trial on a slow hour (N=1000: 333.7 -> 336.6
               MB, peak 349.6, 93.3 s; the report's modules, 27 MB, load when the sweep
               opens). N=3000 at 25104cc: 316.0 MB at 20%, 317.5 at 80%, 321.2 at 90%,
               peak 371.9.

The driver is flat during the trials. What is left grows only at the close, which holds
every trial's row for the report (about 5 KB a trial, 8 to 10 KB of resident memory with
the report's own table). Every trial was recorded (N FINISHED under a FINISHED parent) in
each run. Side by side (``N=500``, alternated, two repeats): uniquely named tasks took
53.0 and 52.6 s and ended the trials at 313.7 MB; one name, 46.4 and 48.6 s and 307.9 MB
(peaks 354 vs 345). Plain Ray shows the same: 2,000 streaming tasks of 30 ms each left
the driver at 151.8 MB unnamed (151.3 after 250) and at 164.9 MB uniquely named.
Per trial, py-spy (``py-spy record -r 50 --pid``) put the driver at about 33 ms of CPU
(MLflow's SQLite writes two thirds of it) and each worker at about 55 ms (Hydra's
``run_job``: three deep copies of the job's config and its three YAML files), the trial
itself 17 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_cli, toy  # noqa: E402  (the tests' toy sizes and CLI runner)

POLL_S = 0.1
# Where the driver's RSS is shown, as fractions of the wall time (the close is the last few %).
TRAJECTORY = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass
class Sample:
    trials: int
    wall_s: float
    recorded: int  # FINISHED child runs under the sweep's parent
    parent_status: str
    peak_rss_mb: float
    rss_growth_mb: float  # RSS at 75% of the wall time minus RSS at 25%
    rss_series: list[tuple[float, float]]  # (seconds since start, RSS in MB)


def rss_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of ``pid`` in MB, or None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)
    except KeyError:  # a zombie has no memory lines
        return None


def run_sweep(trials: int, timeout: float) -> Sample:
    with tempfile.TemporaryDirectory(prefix="rnnsweep-scale-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        args = ["-m", *toy("steps=1", "workload=train", f"seed=range({trials})"),
                f"tracking.uri={uri}", f"hydra.sweep.dir={tmp}/multirun"]
        # The output goes to a file, read after exit: a pipe nobody reads meanwhile would
        # block the CLI long before a 1000-trial sweep ends.
        log = open(Path(tmp) / "cli.log", "w+")  # noqa: SIM115 - closed below
        started = time.perf_counter()
        proc = start_cli(args, Path(tmp), merge_output=True, stdout=log)
        series: list[tuple[float, float]] = []
        peak = 0.0
        while proc.poll() is None:
            now = time.perf_counter() - started
            if now > timeout:
                proc.kill()
                raise SystemExit(f"{trials}-trial sweep still running after {timeout:.0f} s")
            mem = rss_mb(proc.pid)
            if mem:
                series.append((now, mem[0]))
                peak = max(peak, mem[1])
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
        log.seek(0)
        output = log.read()
        log.close()
        if proc.returncode != 0:
            raise SystemExit(f"{trials}-trial sweep exited {proc.returncode}:\n{output[-3000:]}")
        recorded, parent_status = count_runs(uri)
    growth = rss_at(series, 0.75 * wall) - rss_at(series, 0.25 * wall)
    return Sample(trials, wall, recorded, parent_status, peak, growth, series)


def rss_at(series: list[tuple[float, float]], at: float) -> float:
    return next((rss for t, rss in series if t >= at), series[-1][1] if series else 0.0)


def count_runs(uri: str) -> tuple[int, str]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rnnsweep").experiment_id
    runs = client.search_runs([experiment], run_view_type=ViewType.ALL, max_results=50000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    finished = sum(r.info.status == "FINISHED" for r in children)
    return finished, ",".join(p.info.status for p in parents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per sweep")
    opts = parser.parse_args()

    samples: dict[int, list[Sample]] = {n: [] for n in opts.sizes}
    for repeat in range(opts.repeats):
        for n in opts.sizes:
            sample = run_sweep(n, opts.timeout)
            samples[n].append(sample)
            print(f"repeat {repeat + 1}: N={n:<5} wall {sample.wall_s:7.1f} s  "
                  f"recorded {sample.recorded}/{n}  parent {sample.parent_status}  "
                  f"peak RSS {sample.peak_rss_mb:6.1f} MB  "
                  f"RSS growth {sample.rss_growth_mb:+6.1f} MB", flush=True)
            print("    RSS MB at " + ", ".join(
                f"{f:.0%} {rss_at(sample.rss_series, f * sample.wall_s):.1f}"
                for f in TRAJECTORY), flush=True)

    print(f"\n{opts.repeats} repeat(s), whole CLI processes, medians")
    print(f"{'N':>6}{'wall s':>10}{'s/trial':>10}{'peak RSS MB':>13}{'RSS growth MB':>15}"
          f"{'all recorded':>14}")
    for n, runs in samples.items():
        wall = statistics.median(s.wall_s for s in runs)
        complete = all(s.recorded == n and s.parent_status == "FINISHED" for s in runs)
        print(f"{n:>6}{wall:>10.1f}{wall / n:>10.3f}"
              f"{statistics.median(s.peak_rss_mb for s in runs):>13.1f}"
              f"{statistics.median(s.rss_growth_mb for s in runs):>+15.1f}"
              f"{'yes' if complete else 'NO':>14}")
    sizes = sorted(opts.sizes)
    for small, big in zip(sizes, sizes[1:], strict=False):
        # Paired within a repeat, so drift between repeats cancels.
        marginal = [(b.wall_s - s.wall_s) / (big - small)
                    for s, b in zip(samples[small], samples[big], strict=True)]
        print(f"marginal cost per trial, N={small} -> {big}: "
              f"{statistics.median(marginal):.3f} s (every repeat: "
              f"{' '.join(f'{m:.3f}' for m in marginal)}; target <= 0.1 s)")
        memory = [(b.peak_rss_mb - s.peak_rss_mb) / (big - small)
                  for s, b in zip(samples[small], samples[big], strict=True)]
        print(f"driver peak RSS per trial, N={small} -> {big}: "
              f"{statistics.median(memory) * 1024:+.0f} KB (every repeat: "
              f"{' '.join(f'{m * 1024:+.0f}' for m in memory)}; flat: about 0)")


if __name__ == "__main__":
    main()

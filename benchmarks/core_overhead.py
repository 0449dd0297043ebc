"""What rnnsweep's own machinery costs, measured side by side with bare PyTorch.

    python benchmarks/core_overhead.py [--rounds 6] [--steps 12] [--min-run-time 1.0]

(a) Training step: ``rnnsweep.trial.training.train`` (guarded: NaN checks, gradient norm,
    saturation, one host sync per step) against a bare step of the same model
    (zero_grad, forward, MSE, backward, optimizer.step). Target: ratio <= 1.05.
(b) Forward latency: ``rnnsweep.trial.timing.time_call`` exactly as the trial's ``_bench``
    uses it, against a bare ``time.perf_counter`` loop over the same callable.
    Target: ratio within 0.95-1.05 (the harness neither adds nor hides time).
(c) Logging: one trial record with 1,000 steps of 4 per-step series written to a fresh
    SQLite MLflow store through ``Tracker.write_record`` (and the metrics alone through
    ``Tracker.log``). Target: <= ~1 s.

Shapes are experiment 1's defaults (docs/experiments.md): LSTM 128 -> 256, seq_len 100,
batch 32, fp32, Adam, regression task. Compared variants alternate (ABAB...) so drift in
machine load hits both; each figure is a median. Run it on a quiet machine: the load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from rnnsweep.record import TrialRecord
from rnnsweep.trial import data, timing, training
from rnnsweep.trial.models import RecurrentNet
from rnnsweep.trial.run import _forward_fn  # the very callable the trial times

CELL, INPUT, HIDDEN, LAYERS, SEQ, BATCH, SEED, LR = "lstm", 128, 256, 1, 100, 32, 0, 1e-3
LOG_STEPS, SERIES = 1000, ("loss", "grad_norm", "grad_norm_clipped", "saturation")


def build() -> RecurrentNet:
    torch.manual_seed(SEED)
    return RecurrentNet(CELL, INPUT, HIDDEN, LAYERS, "fused")


# --- (a) training step ---------------------------------------------------------------------


def rnnsweep_steps(model, optimizer, batch_at, steps: int, device) -> list[float]:
    result = training.train(model, batch_at, steps, optimizer, device, None, False,
                            training.GuardSettings())
    return result.step_times_s[1:]  # train() reports the median of the steady steps too


def bare_steps(model, optimizer, batch_at, steps: int) -> list[float]:
    model.train()
    times = []
    for step in range(steps):
        started = time.perf_counter()
        x, target = batch_at(step)
        optimizer.zero_grad(set_to_none=True)
        prediction, _, _ = model(x)
        loss = nn.functional.mse_loss(prediction, target)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times[1:]


def bench_training(rounds: int, steps: int, device) -> tuple[list[float], list[float]]:
    """Per-round median step times (seconds) of each variant, rounds alternating."""
    batch_at = data.batches("regression", BATCH, SEQ, INPUT, 1, device, SEED)
    ours_model, bare_model = build().to(device), build().to(device)
    ours_opt = training.make_optimizer("adam", ours_model.parameters(), LR)
    bare_opt = training.make_optimizer("adam", bare_model.parameters(), LR)
    rnnsweep_steps(ours_model, ours_opt, batch_at, 3, device)  # warm-up, both
    bare_steps(bare_model, bare_opt, batch_at, 3)
    ours, bare = [], []
    for _ in range(rounds):  # A B A B ...
        ours.append(statistics.median(rnnsweep_steps(ours_model, ours_opt, batch_at, steps,
                                                     device)))
        bare.append(statistics.median(bare_steps(bare_model, bare_opt, batch_at, steps)))
    return ours, bare


# --- (b) forward latency -------------------------------------------------------------------


def bench_latency(rounds: int, min_run_time: float, warmup: int, threads: int,
                  device) -> tuple[list[float], list[float]]:
    """Per-round forward latencies (seconds): time_call's median, the bare loop's median."""
    model = build().to(device).eval()
    torch.manual_seed(SEED + 1)
    x = torch.randn(BATCH, SEQ, INPUT, device=device)
    forward = _forward_fn(model, x, device, None)
    ours, bare = [], []
    for _ in range(rounds):  # A B A B ...
        ours.append(timing.time_call(forward, device, threads, warmup, min_run_time).median_s)
        for _ in range(warmup):
            forward()
        calls, deadline = [], time.perf_counter() + min_run_time
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            forward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            calls.append(time.perf_counter() - started)
        bare.append(statistics.median(calls))
    return ours, bare


# --- (c) logging ---------------------------------------------------------------------------


def trial_record() -> TrialRecord:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from rnnsweep import config
    from rnnsweep.config import sweeps
    from rnnsweep.record import config_hash, flatten
    from rnnsweep.trial.environment import device_tags

    config.register()
    sweeps.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=basic"])
    GlobalHydra.instance().clear()
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    params = flatten(container)
    gen = torch.Generator().manual_seed(0)
    series = {name: torch.rand(LOG_STEPS, generator=gen, dtype=torch.float64).tolist()
              for name in SERIES}
    metrics = {f"summary_{i}": float(i) for i in range(20)}
    tags = {**device_tags(torch.device("cpu")), "rnnsweep.config_hash": config_hash(params),
            "rnnsweep.outcome": "OK"}
    return TrialRecord(params=params, tags=tags, metrics=metrics, step_metrics=series,
                       artifacts={"config.yaml": OmegaConf.to_yaml(container).encode()})


def bench_logging(repeats: int) -> tuple[float, float, float, int]:
    from mlflow.entities import Metric

    from rnnsweep.tracking import Tracker

    record = trial_record()
    now = int(time.time() * 1000)
    metrics_only = [Metric(name, v, now, step) for name, values in record.step_metrics.items()
                    for step, v in enumerate(values)]
    write_s, log_s = [], []
    with tempfile.TemporaryDirectory(prefix="rnnsweep-bench-") as tmp:
        template = Path(tmp, "template.db")
        started = time.perf_counter()
        Tracker(f"sqlite:///{template}", "warm")  # creates MLflow's tables
        create_s = time.perf_counter() - started
        for i in range(repeats):
            db = Path(tmp, f"store{i}.db")
            shutil.copyfile(template, db)  # a fresh store: tables made, nothing logged
            tracker = Tracker(f"sqlite:///{db}", "bench")
            artifacts = Path(tmp, f"artifacts{i}").as_uri()
            tracker.experiment_id = tracker.client.create_experiment(f"bench{i}", artifacts)
            run_id = tracker.start_run("record")
            started = time.perf_counter()
            tracker.write_record(run_id, record)
            write_s.append(time.perf_counter() - started)
            run_id = tracker.start_run("metrics")
            started = time.perf_counter()
            tracker.log(run_id, metrics=metrics_only)
            log_s.append(time.perf_counter() - started)
            history = tracker.client.get_metric_history(run_id, "loss")
            assert len(history) == LOG_STEPS, len(history)
    return statistics.median(write_s), statistics.median(log_s), create_s, len(metrics_only)


# --- report --------------------------------------------------------------------------------


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def busy_fraction(seconds: float = 1.0) -> float | None:
    """The share of all CPUs busy right now (the load average lags by a minute)."""
    def sample():
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def paired(ours: list[float], bare: list[float]) -> tuple[float, float, float, float, float]:
    """Medians of each variant, and the median (min, max) of the per-round ratios: each
    round's two measurements were taken back to back, so their ratio cancels slow drift."""
    ratios = sorted(a / b for a, b in zip(ours, bare, strict=True))
    return (statistics.median(ours), statistics.median(bare), statistics.median(ratios),
            ratios[0], ratios[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="ABAB rounds for (a) and (b)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per round")
    parser.add_argument("--min-run-time", type=float, default=1.0,
                        help="seconds per latency measurement (the trial default is 1.0)")
    parser.add_argument("--warmup", type=int, default=3, help="the trial default is 3")
    parser.add_argument("--log-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: all usable CPUs, as a trial uses)")
    args = parser.parse_args()

    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    cores = os.cpu_count() or 1
    print(f"rnnsweep core overhead: torch {torch.__version__}, {device}, {args.threads} "
          f"threads, {cores} cores")
    print(f"shapes (experiment 1): {CELL} {INPUT}->{HIDDEN}, seq_len {SEQ}, batch {BATCH}")
    busy = busy_fraction()
    print(f"load average before: {load()}; CPUs busy now: "
          f"{'unknown' if busy is None else f'{busy:.0%}'}")
    if busy is not None and busy > 0.1:
        print("warning: the machine is busy; figures will be noisy - rerun when quiet")

    started = time.perf_counter()
    step = paired(*bench_training(args.rounds, args.steps, device))
    lat = paired(*bench_latency(args.rounds, args.min_run_time, args.warmup, args.threads,
                                device))
    write_s, log_s, create_s, n_metrics = bench_logging(args.log_repeats)
    elapsed = time.perf_counter() - started

    def compared(name, figures, target, ok):
        ours, bare, ratio, lo, hi = figures
        return (name, f"{ours * 1e3:.3f}", f"{bare * 1e3:.3f}", f"{ratio:.3f}",
                f"{lo:.3f}-{hi:.3f}", target, ok(ratio))

    rows = [
        compared("(a) training step, median ms", step, "ratio <= 1.05", lambda r: r <= 1.05),
        compared("(b) forward latency, median ms", lat, "0.95 <= ratio <= 1.05",
                 lambda r: 0.95 <= r <= 1.05),
        (f"(c) write_record, 4x{LOG_STEPS} steps, s", f"{write_s:.3f}", "-", "-", "-",
         "<= ~1 s", write_s <= 1.0),
        (f"(c) log, {n_metrics} step metrics, s", f"{log_s:.3f}", "-", "-", "-", "<= ~1 s",
         log_s <= 1.0),
    ]
    header = ("measurement", "rnnsweep", "bare", "ratio", "ratio range", "target")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for *cells, ok in rows:
        line = "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
        print(f"{line}  {'ok' if ok else 'MISSED'}")
    print()
    print(f"(a) {args.rounds} ABAB rounds x {args.steps} steps, a round's median step (its "
          f"first step dropped); ratio = median of per-round ratios")
    print(f"(b) {args.rounds} ABAB rounds: time_call(warmup={args.warmup}, "
          f"min_run_time={args.min_run_time}) as in the trial's _bench vs a per-call "
          f"perf_counter median over the same callable")
    print(f"(c) median of {args.log_repeats} fresh stores; creating MLflow's tables (not "
          f"counted) took {create_s:.2f} s")
    print(f"load average after: {load()}   total {elapsed:.1f} s")
    if max(step[4] / step[3], lat[4] / lat[3]) > 1.25:
        print("warning: per-round ratios spread by more than 25%: something else ran "
              "meanwhile; rerun on a quiet machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())

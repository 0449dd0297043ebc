"""What the long-trial machinery costs a training step, measured side by side.

    python benchmarks/long_trials.py [--rounds 6] [--steps 150] [--saves 10]

(a) Live metrics: ``rnnsweep.trial.training.train`` with a live channel drained by a
    thread every ``tracking.live_interval_s`` (default 3 s; what the Ray worker does)
    against the same loop with none. Rounds alternate (ABAB...) so drift in machine
    load hits both; each figure is the median step time of a round, and the ratio is
    the median of the per-pair ratios. Target: overhead <= 2%.
(b) Checkpoints: the cost of one save (model, Adam state, RNG, source position, metric
    history) of the seed's 2-layer LSTM 256 -> 512, through ``Checkpointer.save``
    (``torch.save`` to a temporary file, renamed over the last): median of ``--saves``,
    and the size on disk.

Shapes for (a) are experiment 1's defaults (LSTM 128 -> 256, seq_len 100, batch 32,
fp32, Adam, regression task). CPU only here; on a GPU host pass ``--device cuda``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from rnnsweep.trial import data, training
from rnnsweep.trial.checkpoint import Checkpointer
from rnnsweep.trial.live import Live
from rnnsweep.trial.models import RecurrentNet, split_output


def _model(input_size: int, hidden: int, layers: int, device: torch.device) -> RecurrentNet:
    torch.manual_seed(0)
    return RecurrentNet(cell="lstm", input_size=input_size, hidden_size=hidden,
                        num_layers=layers, impl="fused", output_size=1).to(device)


def _round(live_on: bool, steps: int, interval: float, device: torch.device) -> float:
    """Median step time (ms) of one training run, with or without a live channel."""
    model = _model(128, 256, 1, device)
    source = data.Regression(32, 100, 128, device, 0)
    optimizer = training.make_optimizer("adam", model.parameters(), 1e-3)
    live = Live() if live_on else None
    stop = threading.Event()
    drained = []
    if live is not None:
        def drain() -> None:  # the worker's side: a batch every interval
            while not stop.wait(interval):
                drained.append(len(live.drain()))
        threading.Thread(target=drain, daemon=True).start()
    result = training.train(model, source.batch, steps, optimizer, device, None, False,
                            training.GuardSettings(), loss_fn=source.loss,
                            hooks=training.Hooks(live=live, batch_size=32))
    stop.set()
    return result.step_time_ms


def live_overhead(rounds: int, steps: int, interval: float, device: torch.device) -> None:
    _round(False, 5, interval, device)  # warm-up: allocator, oneDNN primitives
    off, on = [], []
    for _ in range(rounds):
        off.append(_round(False, steps, interval, device))
        on.append(_round(True, steps, interval, device))
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    print(f"(a) live metrics, interval {interval:g} s, {rounds} interleaved pairs of "
          f"{steps} steps")
    print(f"    step time off: median {statistics.median(off):.2f} ms  "
          f"(rounds: {', '.join(f'{v:.2f}' for v in off)})")
    print(f"    step time on:  median {statistics.median(on):.2f} ms  "
          f"(rounds: {', '.join(f'{v:.2f}' for v in on)})")
    ratio = statistics.median(ratios)
    print(f"    on/off: median of pair ratios {ratio:.4f}  ({(ratio - 1) * 100:+.2f}%; "
          f"target <= +2%)")
    # What the loop itself does more per step with a live channel, timed alone: on a
    # loaded machine the paired figure above is mostly the drift between rounds.
    live, row = Live(), {name: 1.0 for name in (*training.COLUMNS, *training.PER_STEP)}
    calls = 20_000
    began = time.perf_counter()
    for step in range(calls):
        live.log(step, {k: v for k, v in row.items() if k != "output_finite"})
        if step % 1000 == 999:
            live.drain()
    per_step_us = (time.perf_counter() - began) / calls * 1e6
    print(f"    the live channel alone: {per_step_us:.2f} us per step = "
          f"{per_step_us / 1e3 / statistics.median(off) * 100:.4f}% of the median step")


def checkpoint_cost(saves: int, device: torch.device) -> None:
    model = _model(256, 512, 2, device)
    source = data.Regression(32, 100, 256, device, 0)
    optimizer = training.make_optimizer("adam", model.parameters(), 1e-3)
    x, y = source.batch(0)
    prediction, _ = split_output(model(x))
    source.loss(prediction, y).backward()
    optimizer.step()  # Adam's moments exist, as in any checkpoint after step 1
    history = {"loss": [1.0] * 10_000, "grad_norm": [1.0] * 10_000}
    with tempfile.TemporaryDirectory(prefix="rnnsweep-ckpt-bench-") as tmp:
        saver = Checkpointer(Path(tmp), every_s=None, every_steps=1, keep=False)
        times = []
        for step in range(saves + 1):
            began = time.perf_counter()
            saver.save({"step": step, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scaler": None, "scheduler": None,
                        "source": source.state_dict(), "rng": {"torch": torch.get_rng_state()},
                        "series": history, "sparse": {}, "counts": {}})
            times.append(time.perf_counter() - began)
        size = os.path.getsize(saver.path)
    times = times[1:]  # the first also makes the directory
    params = sum(p.numel() for p in model.parameters())
    print(f"(b) checkpoint of a 2-layer LSTM 256 -> 512 ({params / 1e6:.2f} M parameters, "
          f"Adam state, 10,000 steps of history): {size / 2**20:.1f} MiB")
    print(f"    per save: median {statistics.median(times) * 1e3:.1f} ms, "
          f"min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f} ({saves} saves)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--saves", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch threads "
          f"{torch.get_num_threads()}")
    live_overhead(args.rounds, args.steps, args.interval, device)
    checkpoint_cost(args.saves, device)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

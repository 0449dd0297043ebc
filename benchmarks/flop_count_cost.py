"""What counting a trial's forward FLOPs costs (rnnsweep.trial.flops), next to one plain
forward pass of the same single sequence, for the ready sweeps' shapes.

    python benchmarks/flop_count_cost.py [--rounds 5]

Rounds alternate plain and counted passes; medians are printed. The count runs once per
trial, before training and timing, so it adds to a trial's wall time, not to its figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnsweep.trial import flops
from rnnsweep.trial.models import RecurrentNet

SHAPES = {  # name: (cell, input, hidden, layers, impl, seq_len)
    "exp1 lstm fused 128->256 T100": ("lstm", 128, 256, 1, "fused", 100),
    "exp2 lstm loop 256->512 T200": ("lstm", 256, 512, 1, "loop", 200),
    "exp3 lstm fused 2x256->512 T100": ("lstm", 256, 512, 2, "fused", 100),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    cpu = torch.device("cpu")
    for name, (cell, i, h, layers, impl, steps) in SHAPES.items():
        torch.manual_seed(0)
        model = RecurrentNet(cell, i, h, layers, impl)
        x = torch.zeros(1, steps, i)
        with torch.no_grad():
            model(x)  # burn-in: first-call allocations are not the counter's cost
        plain, counted = [], []
        for _ in range(rounds):  # A B A B ...
            started = time.perf_counter()
            with torch.no_grad():
                model(x)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            count = flops.forward_flops(model, i, steps, cpu)
            counted.append(time.perf_counter() - started)
        print(f"{name}: {count.per_sequence:,} FLOPs/seq ({count.source}); "
              f"plain forward {statistics.median(plain) * 1e3:.1f} ms, "
              f"counted {statistics.median(counted) * 1e3:.1f} ms (medians of {rounds})")


if __name__ == "__main__":
    main()

"""``python -m rnnsweep.compare A B``: did B get faster or slower than A, beyond the noise?

A and B are two sweeps: parent run ids, or (without ids) the last two sweeps of an
experiment, older first. Trials are matched by their config without the environment
(``hardware.*``, where results go, and any ``--ignore`` key), so the same sweep before and
after a torch upgrade, on CPU and GPU, or on two GPU models lines up trial by trial.

For each timed metric the ratio B/A of the medians comes with a 95% confidence interval,
bootstrapped from the samples each trial records as the ``timing/<metric>`` series: its
timing blocks for the forward latencies, its steady training steps for ``step_time_ms``,
its streamed chunks for ``stream_latency_ms_p50``. A pair is "slower" when the interval
lies above 1 and the ratio exceeds 1 + threshold, "faster" symmetrically, and otherwise
"same within noise". The threshold is the noise floor between trials: on a shared machine
the same script's timings drift 10-20% from one process to the next, which no
within-trial interval can see. A pair in
which either trial carries a noise verdict (``rnnsweep.timing.noisy``: other load beside
it, a wide spread, a shared device) is judged against ``--noisy-threshold`` instead: on
this project's 2-core machine at a load average of 12, the same toy trial's median moved
up to 4x from one trial to the next, so only a change larger than that can be told.

Exit status: 0, or 1 when any pair is significantly slower beyond the threshold (for CI
gating), or 2 on bad input (no such run, no matching trials).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException

from rnnsweep import privacy
from rnnsweep.contract import TIMED_METRICS
from rnnsweep.record import NON_IDENTITY_PREFIXES
from rnnsweep.report.axes import label, sweep_axes, values
from rnnsweep.report.model import Trial
from rnnsweep.report.reading import ReportError, locate_sweeps, sweep_trials
from rnnsweep.text import one_line, plain
from rnnsweep.tracking import Tracker

# Keys that describe where a trial ran, not what it computed.
ENVIRONMENT_PREFIXES = (*NON_IDENTITY_PREFIXES, "hardware.")
# The band a pair with a noisy trial must leave: 3.0 means more than 4x slower or faster.
NOISY_THRESHOLD = 3.0
RESAMPLES = 2000
MIN_BLOCKS = 3  # fewer samples give no interval
SLOWER, FASTER, SAME, UNKNOWN = "slower", "faster", "same within noise", "no interval"


@dataclass
class Pair:
    name: str
    metric: str
    a: float
    b: float
    low: float  # 95% interval of b/a; nan when too few samples
    high: float
    verdict: str
    noisy: bool = False  # either trial's timings carry a noise verdict

    @property
    def ratio(self) -> float:
        return self.b / self.a


def compare(tracker: Tracker, a: str, b: str, threshold: float,
            ignore: tuple[str, ...] = (),
            noisy_threshold: float = NOISY_THRESHOLD) -> list[Pair]:
    trials_a, trials_b = (_ok_trials(tracker, run) for run in (a, b))
    index_b = _by_config(trials_b, ignore)
    matched = [(t, index_b[key]) for key, t in _by_config(trials_a, ignore).items()
               if key in index_b]
    if not matched:
        raise ReportError(f"sweeps {a} and {b} have no matching trials (matched by config "
                          "without hardware.*, tracking.*, ray.*"
                          + (f" and {', '.join(ignore)}" if ignore else "") + ")")
    axes = sweep_axes([t for t, _ in matched])
    matched.sort(key=lambda pair: values(pair[0], axes))
    rng = np.random.default_rng(0)
    pairs = []
    for ta, tb in matched:
        for metric in TIMED_METRICS:
            if metric in ta.metrics and metric in tb.metrics:
                low, high = _interval(_blocks(tracker, ta, metric),
                                      _blocks(tracker, tb, metric), rng)
                pair = Pair(label(ta, axes) or ta.run_id[:8], metric, ta.metrics[metric],
                            tb.metrics[metric], low, high, "", ta.noisy or tb.noisy)
                pair.verdict = verdict(pair, noisy_threshold if pair.noisy else threshold)
                pairs.append(pair)
    return pairs


def verdict(pair: Pair, threshold: float) -> str:
    if math.isnan(pair.low):
        return UNKNOWN
    if pair.low > 1 and pair.ratio > 1 + threshold:
        return SLOWER
    if pair.high < 1 and pair.ratio < 1 / (1 + threshold):
        return FASTER
    return SAME


def _ok_trials(tracker: Tracker, parent: str) -> list[Trial]:
    return [t for t in sweep_trials(tracker, tracker.client.get_run(parent)) if t.ok]


def _by_config(trials: list[Trial], ignore: tuple[str, ...]) -> dict[tuple, Trial]:
    found: dict[tuple, Trial] = {}
    for t in trials:
        key = tuple(sorted((k, v) for k, v in t.params.items()
                           if not k.startswith(ENVIRONMENT_PREFIXES) and k not in ignore))
        found.setdefault(key, t)  # a resumed sweep may hold a config twice: the first
    return found


def _blocks(tracker: Tracker, trial: Trial, metric: str) -> np.ndarray:
    history = tracker.client.get_metric_history(trial.run_id, f"timing/{metric}")
    return np.array([m.value for m in sorted(history, key=lambda m: m.step)])


def _interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% bootstrap interval of median(b) / median(a), resampling each trial's blocks."""
    if len(a) < MIN_BLOCKS or len(b) < MIN_BLOCKS:
        return math.nan, math.nan
    med_a = np.median(rng.choice(a, (RESAMPLES, len(a))), axis=1)
    med_b = np.median(rng.choice(b, (RESAMPLES, len(b))), axis=1)
    low, high = np.percentile(med_b / med_a, [2.5, 97.5])
    return float(low), float(high)


def table(pairs: list[Pair], a: str, b: str) -> str:
    from rnnsweep.report.render import markdown_table

    rows = [[p.name, p.metric, plain(p.a), plain(p.b), f"{p.ratio:.3f}",
             "-" if math.isnan(p.low) else f"{p.low:.3f}-{p.high:.3f}",
             p.verdict + (" (noisy)" if p.noisy else "")]
            for p in pairs]
    head = ["trial", "metric", f"A {a[:8]}", f"B {b[:8]}", "B/A", "95% CI", "verdict"]
    return "\n".join(markdown_table(head, rows)) + "\n"


def plot(pairs: list[Pair], a: str, b: str, threshold: float) -> bytes:
    from rnnsweep.report import plots

    labels = [f"{p.name} {p.metric}: {p.verdict}" + (" (noisy)" if p.noisy else "")
              for p in pairs]
    return plots.ratios(labels, [p.ratio for p in pairs],
                        [p.low for p in pairs], [p.high for p in pairs], threshold,
                        title=f"B {b[:8]} vs A {a[:8]}: time ratio B/A (95% CI)")


def main(argv: list[str] | None = None) -> int:
    privacy.telemetry_off()
    args = _parser().parse_args(argv)
    if len(args.sweeps) not in (0, 2):
        print("rnnsweep.compare: error: give two sweep parent run ids (A B), or none for the "
              "last two sweeps of --experiment", file=sys.stderr)
        return 2
    try:
        if len(args.sweeps) == 2 and args.sweeps[0] == args.sweeps[1]:
            raise ReportError(f"A and B are the same sweep ({args.sweeps[0]}); give two "
                              "different parent run ids")
        if args.out is not None:
            _check_out_file(args.out)
        tracker, (a, b) = locate_sweeps(args.tracking_uri, args.sweeps, args.experiment,
                                        count=2)
        pairs = compare(tracker, a, b, args.threshold, tuple(args.ignore),
                        args.noisy_threshold)
    except (ReportError, MlflowException) as exc:
        print(f"rnnsweep.compare: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    text = table(pairs, a, b)
    print(text, end="")
    png = plot(pairs, a, b, args.threshold)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(png)
    if not args.no_log:
        name = f"compare/{a[:8]}_vs_{b[:8]}"
        tracker.log_artifacts(b, {f"{name}.md": text.encode(), f"{name}.png": png})
        print(f"logged {name}.md and {name}.png on B's parent run {b}")
    slower = [p for p in pairs if p.verdict == SLOWER]
    if slower:
        print(f"rnnsweep.compare: {len(slower)} of {len(pairs)} timings are significantly "
              f"slower than A by more than {args.threshold:.0%}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rnnsweep.compare",
        description="Compare two sweeps' timings trial by trial: ratio B/A with a 95% "
                    "confidence interval and a verdict; exit 1 on a significant slowdown.")
    parser.add_argument("sweeps", nargs="*", metavar="RUN_ID",
                        help="A and B, the two sweeps' parent run ids (default: the last two "
                             "sweeps of --experiment, older as A)")
    parser.add_argument("--experiment", default="rnnsweep",
                        help="whose last two sweeps to compare (default: %(default)s)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                        help="MLflow store or server (default: %(default)s)")
    parser.add_argument("--threshold", type=_fraction, default=0.10,
                        help="smallest change that counts, as a fraction (default: "
                             "%(default)s); below it a difference is noise")
    parser.add_argument("--noisy-threshold", type=_fraction, default=NOISY_THRESHOLD,
                        help="the threshold for pairs with a noisy trial (default: "
                             "%(default)s, i.e. beyond 4x)")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="a config key left out of matching (repeatable), e.g. "
                             "model.impl to compare a fused sweep with a loop sweep")
    parser.add_argument("--out", type=Path, help="also write the plot (PNG) to OUT")
    parser.add_argument("--no-log", action="store_true",
                        help="log nothing onto B's parent run")
    return parser


def _check_out_file(out: Path) -> None:
    """``--out`` names the plot's file: not a directory, under a directory (made if
    missing), checked before the work rather than failing after it."""
    if out.is_dir():
        raise ReportError(f"--out={out}: is a directory; name the PNG file to write")
    existing = out.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ReportError(f"--out={out}: {existing} is a file, not a directory")


def _fraction(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 <= value < 10):
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 10), not {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())

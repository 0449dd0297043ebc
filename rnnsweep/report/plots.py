"""The report's PNG plots, drawn with matplotlib's object API.

``matplotlib.figure.Figure`` renders through the Agg canvas without pyplot, so no global
backend or figure state is touched: the plots can be drawn inside a Hydra callback, a Ray
driver or a test process that has no display. Every function takes plain numbers and
returns PNG bytes of one fixed size, with a title naming the sweep and the device.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rnnsweep.text import cut, plain

# Fixed pixel size (no tight bounding box): a reader sees every plot at the same scale.
WIDTH_IN, HEIGHT_IN, DPI = 11.0, 5.5, 100
SIZE_PX = (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI))
# A curve whose values span more than this factor gets a log axis (e.g. an exploding norm).
LOG_SPAN = 20.0

# Legend label -> (x, y) points, x ascending.
Series = Mapping[str, Sequence[tuple[float, float]]]


@dataclass(frozen=True)
class Fit:
    """A least-squares line ``y = slope * x + intercept`` and its R²."""

    slope: float
    intercept: float
    r2: float = math.nan


@dataclass(frozen=True)
class Bar:
    """One fused-vs-loop pair: medians and IQRs in ms, and whether either timing is noisy."""

    label: str
    fused_ms: float
    loop_ms: float
    fused_iqr_ms: float = 0.0
    loop_iqr_ms: float = 0.0
    noisy: bool = False


@dataclass(frozen=True)
class FitPanel:
    ylabel: str
    points: Series
    fits: Mapping[str, Fit]  # same labels as ``points``


def batch_scaling(throughput: Series, ms_per_seq: Series, speedups: Mapping[str, str], *,
                  sweep: str, device: str,
                  ms_per_seq_iqr: Mapping[str, Sequence[float]] | None = None) -> bytes:
    """``speedups``: series label -> its speedup, written into the time-per-sequence legend;
    ``ms_per_seq_iqr``: each point's IQR, drawn as a ±IQR error bar."""
    fig, (left, right) = _figure(2, f"{sweep}: batch parallelism", device)
    for label, points in throughput.items():
        _line(left, points, label)
    for label, points in ms_per_seq.items():
        (line,) = _line(right, points,
                        ": ".join(part for part in (label, speedups.get(label)) if part))
        errors = (ms_per_seq_iqr or {}).get(label)
        if errors and any(errors):
            xs, ys = zip(*points, strict=True)
            right.errorbar(xs, ys, yerr=_half_spread(ys, errors), fmt="none", capsize=4,
                           color=line.get_color())
    for ax, series in ((left, throughput), (right, ms_per_seq)):
        # Batch sizes are usually powers of two; base-2 log spacing puts them evenly apart.
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (sequences, log scale)")
        _ticks_at_data(ax, [x for points in series.values() for x, _ in points])
    wide = _wide(throughput.values())
    if wide:
        left.set_yscale("log")
    else:
        left.set_ylim(bottom=0)
    left.set_ylabel("throughput (sequences/s" + (", log scale)" if wide else ")"))
    left.set_title("throughput")
    # A linear axis from 0 shows the per-sequence gain as the ratio it is.
    right.set_ylim(bottom=0)
    right.set_ylabel("forward latency per sequence (ms; bars: IQR)")
    right.set_title("time per sequence")
    right.legend(loc="upper right", fontsize=10)
    _legend(left, len(throughput))
    return _png(fig)


def fused_vs_loop(bars: Sequence[Bar], *, sweep: str, device: str) -> bytes:
    """Medians with error bars half the IQR each way (the middle half of the timing blocks,
    when they spread evenly); a noisy pair's speedup is marked so."""
    fig, (ax,) = _figure(1, f"{sweep}: fused library kernel vs. per-timestep loop", device)
    width = 0.38
    xs = range(len(bars))
    fused_ms = [b.fused_ms for b in bars]
    loop_ms = [b.loop_ms for b in bars]
    tallest = max([*fused_ms, *loop_ms])
    fused = ax.bar([x - width / 2 for x in xs], fused_ms, width, label="fused (nn.LSTM/GRU/RNN)",
                   yerr=_half_spread(fused_ms, [b.fused_iqr_ms for b in bars]), capsize=4)
    loop = ax.bar([x + width / 2 for x in xs], loop_ms, width, label="loop (cell per timestep)",
                  yerr=_half_spread(loop_ms, [b.loop_iqr_ms for b in bars]), capsize=4)
    # Inside the bars: an error bar's end would push an edge label off the chart.
    ax.bar_label(fused, fmt=plain, label_type="center", color="white", fontweight="bold")
    ax.bar_label(loop, fmt=plain, label_type="center", color="white", fontweight="bold")
    for x, bar in zip(xs, bars, strict=True):
        f, lp = bar.fused_ms, bar.loop_ms
        # The speedup sits above the taller bar of its pair, where the eye compares them.
        text = f"fused {lp / f:.2f}x faster" if f <= lp else f"loop {f / lp:.2f}x faster"
        ax.annotate(text + (" (noisy)" if bar.noisy else ""),
                    (x, max(f, lp)), xytext=(0, 16), textcoords="offset points",
                    ha="center", fontweight="bold")
    ax.set_xticks(list(xs), [b.label for b in bars])
    ax.set_xlabel("cell")
    ax.set_ylabel("forward latency (ms per batch; median, bars: IQR)")
    # A wild spread is clipped rather than squashing the medians it qualifies.
    ax.set_ylim(bottom=0, top=tallest * 1.3)
    fig.legend(loc="outside lower center", ncol=2)
    return _png(fig)


def _half_spread(values: Sequence[float], iqrs: Sequence[float]) -> list[list[float]]:
    """Asymmetric error bars of half the IQR each way, never below zero."""
    return [[min(v, q / 2) for v, q in zip(values, iqrs, strict=True)],
            [q / 2 for q in iqrs]]


def training_curves(loss: Series, grad_norm: Series, clipped_norm: Series,
                    max_norms: Sequence[float], *, sweep: str, device: str,
                    loss_name: str = "MSE") -> bytes:
    title = "training loss and gradient norm" + (" with clipping" if max_norms else "")
    fig, (left, right) = _figure(2, f"{sweep}: {title}", device)
    loss_log = _wide(loss.values())
    for label, points in loss.items():
        _line(left, points, label, log_y=loss_log)
    left.set_xlabel("training step")
    left.set_ylabel(f"training loss ({loss_name}" + (", log scale)" if loss_log else ")"))
    left.set_title("loss")
    _legend(left, len(loss))
    norm_log = _wide([*grad_norm.values(), *clipped_norm.values(), [(0, m) for m in max_norms]])
    for label, points in grad_norm.items():
        (line,) = _line(right, points, label, log_y=norm_log)
        after = clipped_norm.get(label, ())
        if after and list(after) != list(points):  # after clipping: same colour, dotted
            _line(right, after, None, log_y=norm_log, color=line.get_color(), linestyle=":")
    for max_norm in max_norms:
        right.axhline(max_norm, color="black", linestyle="--", linewidth=1)
        right.annotate(f"max_norm={max_norm:g}", (0, max_norm), xycoords=("axes fraction", "data"),
                       xytext=(4, 3), textcoords="offset points", fontsize=9)
    right.set_xlabel("training step")
    right.set_ylabel("global gradient L2 norm" + (" (log scale)" if norm_log else ""))
    right.set_title("gradient norm: solid before clipping, dotted after" if max_norms
                    else "gradient norm (no clipping)")
    for ax, log in ((left, loss_log), (right, norm_log)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log:
            ax.set_yscale("log")
    return _png(fig)


def linear_fits(panels: Sequence[FitPanel], *, xlabel: str, title: str, sweep: str,
                device: str) -> bytes:
    """Measured points and their fitted lines; the legend carries each slope."""
    fig, axes = _figure(len(panels), f"{sweep}: {title}", device)
    for ax, panel in zip(axes, panels, strict=True):
        for label, points in panel.points.items():
            (dots,) = ax.plot(*zip(*points, strict=True), "o", label=label or None)
            fit = panel.fits.get(label)
            if fit:
                xs = [0.0, max(x for x, _ in points)]
                ax.plot(xs, [fit.slope * x + fit.intercept for x in xs], "--",
                        color=dots.get_color(),
                        label=f"fit {plain(fit.slope)} ms/timestep"
                        + ("" if math.isnan(fit.r2) else f", R² {fit.r2:.3f}")
                        + (f" ({label})" if label else ""))
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.legend(loc="upper left", fontsize=9)
    return _png(fig)


MAX_NAMED_BARS = 40


def metric_bars(labels: Sequence[str], metrics: Mapping[str, Sequence[float]], *, sweep: str,
                device: str) -> bytes:
    """The fallback: one panel per metric (its label with unit), one bar per trial."""
    fig, axes = _figure(len(metrics), f"{sweep}: trials compared", device)
    for ax, (ylabel, values) in zip(axes, metrics.items(), strict=True):
        if len(labels) <= MAX_NAMED_BARS:
            bars = ax.bar(range(len(labels)), values,
                          color=[f"C{i % 10}" for i in range(len(labels))])
            ax.bar_label(bars, fmt=plain, padding=2, fontsize=8)
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0,
                          ha="right" if len(labels) > 3 else "center", fontsize=8)
        else:
            # Beyond that, names and values would overprint one another: unnamed bars,
            # the table has the rest. One artist for them all: a Rectangle per bar cost
            # a thousand-trial sweep's driver 25 MB and seconds to draw.
            ax.vlines(range(len(labels)), 0, values, color="C0", linewidth=1)
        ax.set_xlabel("trial")
        ax.set_ylabel(ylabel)
    return _png(fig)


def _figure(panels: int, title: str, device: str) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    fig.suptitle(_wrapped(f"{title}\non {device}"))
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return fig, list(axes)


# A suptitle's characters per line across the figure ('large': 14.4 pt, about 0.6 em a
# character), and at most this many lines: a long sweep name wraps instead of running off
# both edges, and a very long one is cut with an ellipsis.
TITLE_CHARS = int(WIDTH_IN * 72 / (14.4 * 0.6))
TITLE_LINES = 4


def _wrapped(title: str) -> str:
    lines = [piece for line in title.splitlines()
             for piece in (textwrap.wrap(line, TITLE_CHARS, break_on_hyphens=False) or [""])]
    if len(lines) > TITLE_LINES:
        lines = [*lines[:TITLE_LINES - 2], cut(" ".join(lines[TITLE_LINES - 2:-1]), TITLE_CHARS),
                 lines[-1]]
    return "\n".join(lines)


def _line(ax: Axes, points: Sequence[tuple[float, float]], label: str | None, *,
          log_y: bool = False, **style):
    # NaN/inf steps (skipped by the guard) and, on a log axis, non-positive values have no
    # place on the plot; they are left out rather than drawn as misleading clipped points.
    kept = [(x, y) for x, y in points if math.isfinite(y) and (y > 0 or not log_y)]
    xs, ys = (zip(*kept, strict=True) if kept else ((), ()))
    return ax.plot(xs, ys, marker="o" if len(kept) <= 30 else None, markersize=4,
                   label=label or None, **style)


def _wide(series: Iterable[Sequence[tuple[float, float]]]) -> bool:
    ys = [y for points in series for _, y in points if math.isfinite(y) and y > 0]
    return bool(ys) and max(ys) / min(ys) > LOG_SPAN


def _ticks_at_data(ax: Axes, xs: Sequence[float]) -> None:
    ticks = sorted(set(xs))
    ax.set_xticks(ticks, [plain(x) for x in ticks])
    ax.minorticks_off()


def _legend(ax: Axes, entries: int) -> None:
    if entries > 1:
        ax.legend(loc="best", fontsize=9)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def ratios(labels: Sequence[str], values: Sequence[float], lows: Sequence[float],
           highs: Sequence[float], threshold: float, *, title: str) -> bytes:
    """``rnnsweep.compare``: one ratio per row with its interval; 1 and the threshold band
    drawn, so a point right of the band with its whole interval is a significant slowdown."""
    fig = Figure(figsize=(WIDTH_IN, max(2.5, 0.4 * len(labels) + 1.5)), dpi=DPI,
                 layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(labels)))
    err = [[v - lo if math.isfinite(lo) else 0 for v, lo in zip(values, lows, strict=True)],
           [hi - v if math.isfinite(hi) else 0 for v, hi in zip(values, highs, strict=True)]]
    ax.errorbar(values, ys, xerr=err, fmt="o", capsize=4)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.axvspan(1 / (1 + threshold), 1 + threshold, color="grey", alpha=0.15,
               label=f"within ±{threshold:.0%}: same within noise")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio B/A (above 1: B slower)")
    ax.set_title(_wrapped(title))
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)

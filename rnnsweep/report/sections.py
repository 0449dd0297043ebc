"""The report's sections: findings, plots and notes chosen by the axes the sweep varied."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

import numpy as np
from mlflow.tracking import MlflowClient

from rnnsweep.report import plots
from rnnsweep.report.axes import cell_label, groups, label, ok, suffix, values
from rnnsweep.report.model import PARITY_TAGS, Finding, Report
from rnnsweep.report.reading import history
from rnnsweep.text import cut, plain

# Time metrics that grow with sequence length: what they time, and the plot's axis label.
TIME_METRICS = {"latency_ms": ("forward latency", "forward latency (ms per batch)"),
                "step_time_ms": ("training step time", "training step time (ms)")}
# The fallback plot's metrics (the first three that every OK trial has), with axis labels.
FALLBACK_METRICS = {"latency_ms_per_seq": "forward latency per sequence (ms)",
                    "step_time_ms": "training step time (ms)",
                    "stream_latency_ms_p50": "streaming chunk latency p50 (ms)",
                    "final_loss": "final training loss"}
# What each built-in task's loss is (``task.name``), for the axes that show it.
LOSS_NAMES = {"regression": "MSE", "adding": "MSE",
              "char_lm": "cross-entropy, nats per character"}
CURVE_AXIS_PREFIXES = ("precision.", "clipping.")
# "Linear" is said of a fit only at or above this R².
LINEAR_R2 = 0.98
NOTE_CHARS = 300
Section = Callable[[Report], None]


def sections(client: MlflowClient, report: Report) -> list[Section]:
    trials, axes = report.trials, report.axes
    chosen: list[Section] = []
    if "batch" in axes:
        chosen.append(batch_section)
    if any("fused_speedup" in t.metrics for t in trials) or "model.impl" in axes:
        chosen.append(fused_section)
    if "precision.name" in axes:
        chosen.append(precision_section)
    if any(a.startswith(CURVE_AXIS_PREFIXES) for a in axes):
        chosen.append(lambda r: curves_section(r, client))
    if "seq_len" in axes:
        chosen.append(seq_len_section)
    if any(t.parity_checked for t in trials):
        chosen.append(deployment_section)
    return chosen


def batch_section(report: Report) -> None:
    throughput: dict[str, list[tuple[float, float]]] = {}
    per_seq: dict[str, list[tuple[float, float]]] = {}
    errors: dict[str, list[float]] = {}
    speedups = {}
    for name, group in groups(report.trials, report.axes, "batch", "latency_ms_per_seq"):
        per_seq[name] = [(float(t.params["batch"]), t.metrics["latency_ms_per_seq"])
                         for t in group]
        errors[name] = [t.metrics.get("latency_iqr_ms", 0.0) / float(t.params["batch"])
                        for t in group]
        throughput[name] = [(float(t.params["batch"]), t.metrics["throughput_seq_per_s"])
                            for t in group if "throughput_seq_per_s" in t.metrics]
        (small, small_ms), (large, large_ms) = per_seq[name][0], per_seq[name][-1]
        speedup = small_ms / large_ms
        report.findings.append(Finding(
            f"per-sequence speedup, batch {large:g} over batch {small:g}{suffix(name)}",
            speedup, "x", _noisy_detail(group[0], group[-1])))
        speedups[name] = f"batch {large:g} vs {small:g}: {speedup:.2f}x per sequence"
    if per_seq:
        report.plots["plots/batch_scaling.png"] = plots.batch_scaling(
            throughput, per_seq, speedups, sweep=report.title, device=report.device,
            ms_per_seq_iqr=errors)


def fused_section(report: Report) -> None:
    """Bars from trials that timed both implementations (``workload.compare_impl``), or else
    from pairs of trials that differ only in ``model.impl``."""
    others = [a for a in report.axes if a not in ("model.cell", "model.impl")]
    bars: list[plots.Bar] = []
    for t in ok(report.trials, "latency_ms_fused", "latency_ms_loop"):
        bars.append(plots.Bar(cell_label(t, others), t.metrics["latency_ms_fused"],
                              t.metrics["latency_ms_loop"],
                              t.metrics.get("latency_fused_iqr_ms", 0.0),
                              t.metrics.get("latency_loop_iqr_ms", 0.0), t.noisy))
    if not bars and "model.impl" in report.axes:
        rest = [a for a in report.axes if a != "model.impl"]
        paired = ok(report.trials, "latency_ms")
        for _, group in groupby(sorted(paired, key=lambda t: values(t, rest)),
                                key=lambda t: values(t, rest)):
            by_impl = {t.params["model.impl"]: t for t in group}
            if {"fused", "loop"} <= by_impl.keys():
                fused, loop = by_impl["fused"], by_impl["loop"]
                bars.append(plots.Bar(cell_label(fused, others), fused.metrics["latency_ms"],
                                      loop.metrics["latency_ms"],
                                      fused.metrics.get("latency_iqr_ms", 0.0),
                                      loop.metrics.get("latency_iqr_ms", 0.0),
                                      fused.noisy or loop.noisy))
    if not bars:
        return
    for bar in bars:
        report.findings.append(Finding(
            f"fused speedup over loop ({bar.label.replace(chr(10), ', ')})",
            bar.loop_ms / bar.fused_ms, "x", "noisy timings" if bar.noisy else ""))
    report.plots["plots/fused_vs_loop.png"] = plots.fused_vs_loop(
        bars, sweep=report.title, device=report.device)


def precision_section(report: Report) -> None:
    """Each reduced precision's speedup over fp32 with every other axis equal; the trials
    that could not run are in the notes with their reasons."""
    rest = [a for a in report.axes if a != "precision.name"]
    for metric, what in (("step_time_ms", "training step"), ("latency_ms", "forward")):
        timed = ok(report.trials, metric)
        for _, group in groupby(sorted(timed, key=lambda t: values(t, rest)),
                                key=lambda t: values(t, rest)):
            by_name = {t.params["precision.name"]: t for t in group}
            base = by_name.pop("fp32", None)
            if base is None:
                continue
            for name, trial in sorted(by_name.items()):
                where = label(trial, [a for a in rest if _varies(report, a)])
                report.findings.append(Finding(
                    f"{name} speedup over fp32, {what}{suffix(where)}",
                    base.metrics[metric] / trial.metrics[metric], "x",
                    _noisy_detail(base, trial)))


def curves_section(report: Report, client: MlflowClient) -> None:
    loss, norm, clipped = {}, {}, {}
    for t in report.trials:
        if "loss" not in t.metrics:  # no training steps: nothing to draw
            continue
        name = label(t, report.axes) or t.run_id[:8]
        loss[name] = history(client, t.run_id, "loss")
        norm[name] = history(client, t.run_id, "grad_norm")
        clipped[name] = history(client, t.run_id, "grad_norm_clipped")
    if not loss:
        return
    max_norms = sorted({float(t.params["clipping.max_norm"]) for t in report.trials
                        if t.params.get("clipping.max_norm", "None") != "None"})
    trained = [t for t in report.trials if "loss" in t.metrics]
    report.plots["plots/training_curves.png"] = plots.training_curves(
        loss, norm, clipped, max_norms, sweep=report.title, device=report.device,
        loss_name=loss_name(trained))


def loss_name(trials) -> str:
    """What the trials' loss is, from their tasks: one name where they agree, else the
    plain words (a user's task, or tasks whose losses differ)."""
    names = {LOSS_NAMES.get(t.params.get("task.name", ""), "") for t in trials}
    if len(names) > 1:
        return "each task's own loss"
    return next(iter(names), "") or "the task's loss"


@dataclass(frozen=True)
class FitStats:
    slope: float
    intercept: float
    r2: float
    slope_se: float  # nan with two points: no residual degrees of freedom

    @property
    def linear(self) -> bool:
        return self.r2 >= LINEAR_R2


def fit_line(xs: np.ndarray, ys: np.ndarray) -> FitStats:
    """Least squares with its quality: R² and the slope's standard error."""
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (slope * xs + intercept)
    ss_res = float(residual @ residual)
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    sxx = float(((xs - xs.mean()) ** 2).sum())
    dof = len(xs) - 2
    se = math.sqrt(ss_res / dof / sxx) if dof > 0 and sxx > 0 else math.nan
    return FitStats(float(slope), float(intercept), r2, se)


def seq_len_section(report: Report) -> None:
    panels, all_fits = [], []
    for metric, (what, ylabel) in TIME_METRICS.items():
        points, fits = {}, {}
        for name, group in groups(report.trials, report.axes, "seq_len", metric):
            xs = np.array([float(t.params["seq_len"]) for t in group])
            ys = np.array([t.metrics[metric] for t in group])
            fit = fit_line(xs, ys)
            all_fits.append(fit)
            points[name] = list(zip(xs.tolist(), ys.tolist(), strict=True))
            fits[name] = plots.Fit(fit.slope, fit.intercept, fit.r2)
            report.findings.append(Finding(f"{what} slope{suffix(name)}", fit.slope,
                                           "ms/timestep", _fit_detail(fit)))
        if points:
            panels.append(plots.FitPanel(ylabel, points, fits))
    if panels:
        shape = ("time grows linearly with sequence length" if all(f.linear for f in all_fits)
                 else "time vs. sequence length: not linear (R² below "
                      f"{LINEAR_R2:g} in at least one fit)")
        report.plots["plots/seq_len_scaling.png"] = plots.linear_fits(
            panels, xlabel="sequence length (timesteps)",
            title=f"{shape} (least-squares fit)", sweep=report.title, device=report.device)


def deployment_section(report: Report) -> None:
    """The deployment question answered: does each served form compute what eager does?"""
    checked = [t for t in report.trials if t.parity_checked]
    failed = {t.run_id: t.parity_failures for t in checked}
    good = sum(not f for f in failed.values())
    paths = sorted({p for t in checked for p, tag in PARITY_TAGS.items() if tag in t.tags},
                   key=list(PARITY_TAGS).index)
    verdict = ("parity: every path matches eager" if good == len(checked) else
               "parity FAILED: " + "; ".join(
                   f"{run[:8]}: {', '.join(paths_)}" for run, paths_ in failed.items() if paths_))
    report.findings.append(Finding(f"deployment parity ({', '.join(paths)})", good,
                                   f"of {len(checked)} trials", verdict))


def fallback_section(report: Report) -> None:
    """Axes with no dedicated plot: the headline metrics of each trial side by side."""
    oks = [t for t in report.trials if t.ok]
    shown = [key for key in FALLBACK_METRICS if oks and all(key in t.metrics for t in oks)][:3]
    if not shown:
        return
    labels = [label(t, report.axes, short=True) or t.run_id[:8] for t in oks]
    names = {key: FALLBACK_METRICS[key] + (f" ({loss_name(oks)})" if key == "final_loss"
                                           else "") for key in shown}
    metrics = {names[key]: [t.metrics[key] for t in oks] for key in shown}
    report.plots["plots/trials.png"] = plots.metric_bars(
        labels, metrics, sweep=report.title, device=report.device)


def notes_section(report: Report) -> None:
    """What a reader must know before trusting the numbers: noisy timings, trials that did
    not run (with their reasons) and trials reused from earlier sweeps."""
    timed = [t for t in report.trials if t.timed]
    noisy = [t for t in timed if t.noisy]
    if noisy:
        report.notes.append(f"Noisy timings in {len(noisy)} of {len(timed)} timed trials "
                            "(error bars span the IQR):")
        report.notes += [f"- {_who(report, t)}: {cut(t.noise_reason, NOTE_CHARS)}"
                         for t in noisy]
    stopped = [t for t in report.trials if t.outcome in ("STOPPED", "TIMED_OUT")]
    if stopped:
        report.notes.append(f"{_trials(len(stopped))} ended early, where they stopped:")
        report.notes += [f"- {_who(report, t)}: {t.outcome} at step "
                         f"{t.tags.get('rnnsweep.stopped_at_step', '?')} of "
                         f"{t.params.get('steps', '?')}"
                         + (f": {cut(t.reason, NOTE_CHARS)}" if t.reason else "")
                         for t in stopped]
    not_ok = [t for t in report.trials if not t.ok and t not in stopped]
    if not_ok:
        report.notes.append(f"{_trials(len(not_ok))} gave no numbers:")
        report.notes += [f"- {_who(report, t)}: {t.outcome}"
                         + (f": {cut(t.reason, NOTE_CHARS)}" if t.reason else "")
                         for t in not_ok]
    reused = [t for t in report.trials if t.reused]
    if reused:
        report.notes.append(f"{_trials(len(reused))} reused from earlier sweeps (same "
                            "config and environment), not rerun:")
        report.notes += [f"- {_who(report, t)}" for t in reused]


def _trials(count: int) -> str:
    return f"{count} trial" if count == 1 else f"{count} trials"


def _who(report: Report, trial) -> str:
    name = label(trial, report.axes)
    return f"{trial.run_id[:8]}" + (f" ({name})" if name else "")


def _fit_detail(fit: FitStats) -> str:
    se = "n/a (2 points)" if math.isnan(fit.slope_se) else plain(fit.slope_se)
    shape = "linear" if fit.linear else f"not linear (R² < {LINEAR_R2:g})"
    return f"± {se} (SE), R² {fit.r2:.3f}: {shape}"


def _noisy_detail(*trials) -> str:
    return "noisy timings" if any(t.noisy for t in trials) else ""


def _varies(report: Report, axis: str) -> bool:
    return len({t.params.get(axis) for t in report.trials}) > 1

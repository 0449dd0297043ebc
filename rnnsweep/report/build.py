"""A sweep's report, rebuilt from its MLflow records alone.

The report is a Markdown table with one row per child trial (the swept axes, the key
metrics, the outcome), a table of findings (speedups, fitted slopes) and PNG plots chosen
for the axes the sweep varied. ``write_report`` logs it onto the sweep's parent run as
``report.md``, ``report.html`` and ``plots/*.png``.

Everything is read through ``MlflowClient``, never from the store's files, so a report can
be rebuilt for any past sweep, from any store or tracking server::

    python -m rnnsweep.report --run-id <parent run id> [--tracking-uri sqlite:///mlflow.db]
    python -m rnnsweep.report --experiment rnnsweep   # the latest sweep of an experiment
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rnnsweep import redaction
from rnnsweep.record import NON_IDENTITY_PREFIXES
from rnnsweep.report import plots
from rnnsweep.tracking import ROLE_TAG, Tracker, resolve_uri

# Summary metrics shown as table columns, in this order, when any trial has them.
KEY_METRICS = (
    "latency_ms", "latency_ms_per_seq", "throughput_seq_per_s",
    "latency_ms_fused", "latency_ms_loop", "fused_speedup", "impl_max_abs_diff",
    "step_time_ms", "final_loss", "nonfinite_steps", "max_grad_norm", "max_grad_norm_clipped",
    "final_grad_scale", "stream_latency_ms_p50", "stream_latency_ms_p99", "peak_mem_mb",
)
# Axes people sweep most, in the order their columns read best; others follow by name.
AXIS_ORDER = ("model.cell", "model.impl", "precision.name", "clipping.max_norm", "batch",
              "seq_len", "model.hidden_size", "model.num_layers", "task.name")
# Time metrics that grow with sequence length: what they time, and the plot's axis label.
TIME_METRICS = {"latency_ms": ("forward latency", "forward latency (ms per batch)"),
                "step_time_ms": ("training step time", "training step time (ms)")}
# The fallback plot's metrics (the first three that every OK trial has), with axis labels.
FALLBACK_METRICS = {"latency_ms_per_seq": "forward latency per sequence (ms)",
                    "step_time_ms": "training step time (ms)",
                    "stream_latency_ms_p50": "streaming chunk latency p50 (ms)",
                    "final_loss": "final training loss (MSE)"}
CURVE_AXIS_PREFIXES = ("precision.", "clipping.")
REASON_CHARS = 80


class ReportError(Exception):
    """A one-line, user-facing reason why no report can be built."""


@dataclass
class Trial:
    run_id: str
    outcome: str  # OK / UNSUPPORTED / FAILED, or the run status when no trial outcome exists
    reason: str
    params: dict[str, str]
    metrics: dict[str, float]
    device: str  # "" when the trial failed before it saw its device

    @property
    def ok(self) -> bool:
        return self.outcome == "OK"


@dataclass
class Finding:
    what: str
    value: float
    unit: str  # "x" for a speedup, "ms/timestep" for a slope


@dataclass
class Report:
    parent_run_id: str
    sweep: str
    device: str
    axes: list[str]
    trials: list[Trial]
    columns: list[str]
    rows: list[list[str]]
    findings: list[Finding] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)  # "plots/<name>.png" -> PNG

    @property
    def title(self) -> str:
        """The sweep's name; a command-line sweep (named just "sweep") by its axes."""
        if self.sweep == "sweep" and self.axes:
            return f"sweep over {', '.join(self.axes)}"
        return self.sweep

    @property
    def markdown(self) -> str:
        lines = [f"# Sweep report: {self.title}", "",
                 f"Parent run `{self.parent_run_id}` · {len(self.trials)} trials · "
                 f"axes: {', '.join(self.axes) or 'none'} · device: {self.device}", ""]
        lines += _markdown_table(self.columns, self.rows)
        if self.findings:
            lines += ["", "## Findings", ""]
            lines += _markdown_table(["finding", "value"],
                                     [[f.what, _value(f)] for f in self.findings])
        if self.plots:
            lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in self.plots]
        return "\n".join(lines) + "\n"

    @property
    def html(self) -> str:
        """The same report as one self-contained page (plots inlined), which MLflow's
        artifact viewer can show without resolving relative links."""
        def table(columns: list[str], rows: list[list[str]]) -> str:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in rows)
            return f"<table><tr>{head}</tr>{body}</table>"

        parts = [f"<h1>Sweep report: {html.escape(self.title)}</h1>",
                 f"<p>Parent run <code>{self.parent_run_id}</code> · {len(self.trials)} "
                 f"trials · device: {html.escape(self.device)}</p>",
                 table(self.columns, self.rows)]
        if self.findings:
            parts += ["<h2>Findings</h2>",
                      table(["finding", "value"], [[f.what, _value(f)] for f in self.findings])]
        for path, png in self.plots.items():
            data = base64.b64encode(png).decode()
            parts.append(f'<h3>{html.escape(path)}</h3><img alt="{html.escape(path)}" '
                         f'src="data:image/png;base64,{data}">')
        style = ("body{font-family:sans-serif} table{border-collapse:collapse} "
                 "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style>"
                f"<title>{html.escape(self.title)}</title></head><body>{''.join(parts)}"
                "</body></html>\n")

    def artifacts(self) -> dict[str, bytes]:
        return {"report.md": self.markdown.encode(), "report.html": self.html.encode(),
                **self.plots}

    def save(self, out_dir: Path) -> list[Path]:
        written = []
        for rel, content in self.artifacts().items():
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            written.append(path)
        return written


def build_report(tracker: Tracker, parent_run_id: str) -> Report:
    parent = tracker.client.get_run(parent_run_id)
    if parent.info.experiment_id != tracker.experiment_id:
        raise ReportError(f"run {parent_run_id} belongs to experiment "
                          f"{parent.info.experiment_id}, not to the tracker's "
                          f"{tracker.experiment_id}")
    trials = [_trial(run) for run in tracker.children(parent_run_id)]
    if not trials:
        raise ReportError(f"run {parent_run_id} has no child runs: is it a sweep's parent run?")
    axes = sweep_axes(trials)
    trials.sort(key=lambda t: [_sort_key(t.params.get(a)) for a in axes])
    sweep = parent.data.tags.get("rnnsweep.sweep_name") or parent.info.run_name or "sweep"
    devices = sorted({t.device for t in trials if t.device})
    report = Report(parent_run_id, sweep, "; ".join(devices) or "unknown device", axes, trials,
                    *_table(trials, axes))
    for section in _sections(tracker.client, trials, axes):
        section(report)
    if not report.plots:
        _fallback_section(report)
    return report


def write_report(tracker: Tracker, parent_run_id: str) -> Report:
    """Builds the report and logs it onto the parent run; raises on any problem."""
    report = build_report(tracker, parent_run_id)
    tracker.log_artifacts(parent_run_id, report.artifacts())
    return report


def write_report_safely(tracker: Tracker, parent_run_id: str) -> Report | None:
    """For the end of a sweep: a report that cannot be built is a warning, never a failed
    sweep (the trials are recorded; ``python -m rnnsweep.report`` can rebuild it later)."""
    try:
        report = write_report(tracker, parent_run_id)
    except Exception as exc:
        print(f"rnnsweep: warning: no report for parent run {parent_run_id}: "
              f"{type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return None
    print(f"rnnsweep: report ({len(report.plots)} plots) logged on parent run {parent_run_id}")
    return report


def sweep_axes(trials: list[Trial]) -> list[str]:
    """The params that differ across trials, one per independent axis.

    One choice on the command line can change several params (``precision=bf16`` sets
    ``precision.name`` and ``precision.autocast_dtype``). A param whose values are fixed by
    another axis of its own config group, or that splits the trials exactly like another
    axis, is the same axis and is left out; ``*.name`` and ``model.cell`` are kept.
    """
    with_params = [t for t in trials if t.params]
    keys = sorted({k for t in with_params for k in t.params
                   if not k.startswith(NON_IDENTITY_PREFIXES)}, key=_axis_rank)
    varying = [k for k in keys if len({t.params.get(k) for t in with_params}) > 1]
    axes: list[str] = []
    for key in sorted(varying, key=lambda k: (not _is_name(k), _axis_rank(k))):
        same_axis = any(_determines(a, key, with_params)
                        and (_group(a) == _group(key) or _determines(key, a, with_params))
                        for a in axes)
        if not same_axis:
            axes.append(key)
    return sorted(axes, key=_axis_rank)


# --- sections: findings and plots chosen by the sweep's axes --------------------------------

Section = Callable[[Report], None]


def _sections(client: MlflowClient, trials: list[Trial], axes: list[str]) -> list[Section]:
    sections: list[Section] = []
    if "batch" in axes:
        sections.append(_batch_section)
    if any("fused_speedup" in t.metrics for t in trials) or "model.impl" in axes:
        sections.append(_fused_section)
    if any(a.startswith(CURVE_AXIS_PREFIXES) for a in axes):
        sections.append(lambda report: _curves_section(report, client))
    if "seq_len" in axes:
        sections.append(_seq_len_section)
    return sections


def _batch_section(report: Report) -> None:
    throughput: dict[str, list[tuple[float, float]]] = {}
    per_seq: dict[str, list[tuple[float, float]]] = {}
    speedups = {}
    for label, group in _groups(report, "batch", "latency_ms_per_seq"):
        per_seq[label] = [(float(t.params["batch"]), t.metrics["latency_ms_per_seq"])
                          for t in group]
        throughput[label] = [(float(t.params["batch"]), t.metrics["throughput_seq_per_s"])
                             for t in group if "throughput_seq_per_s" in t.metrics]
        (small, small_ms), (large, large_ms) = per_seq[label][0], per_seq[label][-1]
        speedup = small_ms / large_ms
        report.findings.append(Finding(
            f"per-sequence speedup, batch {large:g} over batch {small:g}{_suffix(label)}",
            speedup, "x"))
        speedups[label] = f"batch {large:g} vs {small:g}: {speedup:.2f}x per sequence"
    if per_seq:
        report.plots["plots/batch_scaling.png"] = plots.batch_scaling(
            throughput, per_seq, speedups, sweep=report.title, device=report.device)


def _fused_section(report: Report) -> None:
    """Bars from trials that timed both implementations (``workload.compare_impl``), or else
    from pairs of trials that differ only in ``model.impl``."""
    others = [a for a in report.axes if a not in ("model.cell", "model.impl")]
    bars: list[tuple[str, float, float]] = []
    for t in _ok(report.trials, "latency_ms_fused", "latency_ms_loop"):
        bars.append((_cell_label(t, others), t.metrics["latency_ms_fused"],
                     t.metrics["latency_ms_loop"]))
    if not bars and "model.impl" in report.axes:
        rest = [a for a in report.axes if a != "model.impl"]
        paired = _ok(report.trials, "latency_ms")
        for _, group in groupby(sorted(paired, key=lambda t: _values(t, rest)),
                                key=lambda t: _values(t, rest)):
            by_impl = {t.params["model.impl"]: t for t in group}
            if {"fused", "loop"} <= by_impl.keys():
                bars.append((_cell_label(by_impl["fused"], others),
                             by_impl["fused"].metrics["latency_ms"],
                             by_impl["loop"].metrics["latency_ms"]))
    if not bars:
        return
    for label, fused, loop in bars:
        report.findings.append(Finding(f"fused speedup over loop ({label})", loop / fused, "x"))
    labels, fused_ms, loop_ms = zip(*bars, strict=True)
    report.plots["plots/fused_vs_loop.png"] = plots.fused_vs_loop(
        labels, fused_ms, loop_ms, sweep=report.title, device=report.device)


def _curves_section(report: Report, client: MlflowClient) -> None:
    loss, norm, clipped = {}, {}, {}
    for t in report.trials:
        if "loss" not in t.metrics:  # no training steps: nothing to draw
            continue
        label = _label(t, report.axes) or t.run_id[:8]
        loss[label] = _history(client, t.run_id, "loss")
        norm[label] = _history(client, t.run_id, "grad_norm")
        clipped[label] = _history(client, t.run_id, "grad_norm_clipped")
    if not loss:
        return
    max_norms = sorted({float(t.params["clipping.max_norm"]) for t in report.trials
                        if t.params.get("clipping.max_norm", "None") != "None"})
    report.plots["plots/training_curves.png"] = plots.training_curves(
        loss, norm, clipped, max_norms, sweep=report.title, device=report.device)


def _seq_len_section(report: Report) -> None:
    panels = []
    for metric, (what, ylabel) in TIME_METRICS.items():
        points, fits = {}, {}
        for label, group in _groups(report, "seq_len", metric):
            xs = np.array([float(t.params["seq_len"]) for t in group])
            ys = np.array([t.metrics[metric] for t in group])
            slope, intercept = np.polyfit(xs, ys, 1)
            points[label] = list(zip(xs.tolist(), ys.tolist(), strict=True))
            fits[label] = plots.Fit(float(slope), float(intercept))
            report.findings.append(Finding(f"{what} slope{_suffix(label)}", float(slope),
                                           "ms/timestep"))
        if points:
            panels.append(plots.FitPanel(ylabel, points, fits))
    if panels:
        report.plots["plots/seq_len_scaling.png"] = plots.linear_fits(
            panels, xlabel="sequence length (timesteps)",
            title="time grows linearly with sequence length (least-squares fit)",
            sweep=report.title, device=report.device)


def _fallback_section(report: Report) -> None:
    """Axes with no dedicated plot: the headline metrics of each trial side by side."""
    ok = [t for t in report.trials if t.ok]
    shown = [key for key in FALLBACK_METRICS if ok and all(key in t.metrics for t in ok)][:3]
    if not shown:
        return
    labels = [_label(t, report.axes, short=True) or t.run_id[:8] for t in ok]
    metrics = {FALLBACK_METRICS[key]: [t.metrics[key] for t in ok] for key in shown}
    report.plots["plots/trials.png"] = plots.metric_bars(
        labels, metrics, sweep=report.title, device=report.device)


# --- reading runs -----------------------------------------------------------------------------

def _trial(run) -> Trial:
    tags = run.data.tags
    return Trial(run_id=run.info.run_id, outcome=tags.get("rnnsweep.outcome") or run.info.status,
                 reason=tags.get("rnnsweep.reason", ""), params=dict(run.data.params),
                 metrics=dict(run.data.metrics), device=_device(tags))


def _device(tags: dict[str, str]) -> str:
    name = tags.get("rnnsweep.device", "")
    if name == "cpu":
        threads = tags.get("rnnsweep.num_threads")
        return f"CPU {tags.get('rnnsweep.cpu_model', '')}".strip() + (
            f" ({threads} thread{'' if threads == '1' else 's'})" if threads else "")
    return name


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[float, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# --- axes, groups and labels ------------------------------------------------------------------

def _groups(report: Report, axis: str, metric: str) -> list[tuple[str, list[Trial]]]:
    """OK trials with ``metric``, grouped by the other axes' values, each group sorted along
    ``axis``; groups with fewer than two points on ``axis`` tell nothing and are dropped.
    Axes that do not vary among these trials (e.g. one whose other values all failed) do
    not split or name the groups."""
    trials = _ok(report.trials, metric)
    others = [a for a in report.axes
              if a != axis and len({t.params.get(a) for t in trials}) > 1]
    trials.sort(key=lambda t: _values(t, others))
    groups = []
    for _, members in groupby(trials, key=lambda t: _values(t, others)):
        group = sorted(members, key=lambda t: float(t.params[axis]))
        if len({t.params[axis] for t in group}) > 1:
            groups.append((_label(group[0], others), group))
    return groups


def _ok(trials: Iterable[Trial], *metrics: str) -> list[Trial]:
    return [t for t in trials if t.ok and all(m in t.metrics for m in metrics)]


def _values(trial: Trial, keys: list[str]) -> list:
    return [_sort_key(trial.params.get(k)) for k in keys]


def _label(trial: Trial, keys: list[str], short: bool = False) -> str:
    parts = [(k.rsplit(".", 1)[-1] if short else k, trial.params.get(k, "?")) for k in keys]
    return ", ".join(f"{k}={v}" for k, v in parts)


def _cell_label(trial: Trial, others: list[str]) -> str:
    """A fused-vs-loop bar is named by its cell first, then any other axis."""
    rest = _label(trial, others)
    return trial.params.get("model.cell", "?") + (f"\n{rest}" if rest else "")


def _suffix(label: str) -> str:
    return f" ({label})" if label else ""


def _sort_key(value: str | None) -> tuple:
    """Numbers sort as numbers; ``None`` (e.g. clipping off) before them; text after."""
    if value is None or value == "None":
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def _is_name(key: str) -> bool:
    return key.endswith(".name") or key == "model.cell"


def _axis_rank(key: str) -> tuple[int, str]:
    return (AXIS_ORDER.index(key) if key in AXIS_ORDER else len(AXIS_ORDER), key)


def _group(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _determines(a: str, b: str, trials: list[Trial]) -> bool:
    """Whether knowing param ``a`` fixes param ``b`` in every trial."""
    seen: dict[str | None, str | None] = {}
    return all(seen.setdefault(t.params.get(a), t.params.get(b)) == t.params.get(b)
               for t in trials)


# --- the table --------------------------------------------------------------------------------

def _table(trials: list[Trial], axes: list[str]) -> tuple[list[str], list[list[str]]]:
    metrics = [m for m in KEY_METRICS if any(m in t.metrics for t in trials)]
    columns = ["run", *axes, *metrics, "outcome"]
    rows = []
    for t in trials:
        outcome = t.outcome + (f": {_one_line(t.reason)[:REASON_CHARS]}" if t.reason else "")
        rows.append([t.run_id[:8], *(t.params.get(a, "-") for a in axes),
                     *(_number(t.metrics[m]) if m in t.metrics else "-" for m in metrics),
                     outcome])
    return columns, rows


def _markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    # Padded to equal widths so the same text reads as a table in a terminal too.
    cells = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in [columns, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _value(finding: Finding) -> str:
    return f"{finding.value:.2f}x" if finding.unit == "x" else f"{finding.value:.4g} {finding.unit}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- command line -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rnnsweep.report",
        description="Rebuild a sweep's report from MLflow: print its table and log report.md, "
                    "report.html and plots/*.png onto the sweep's parent run.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the sweep's parent run")
    which.add_argument("--experiment", help="report the latest sweep of this experiment")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                        help="MLflow store or server (default: %(default)s, relative to the "
                             "current directory)")
    parser.add_argument("--no-log", action="store_true",
                        help="only print; log nothing onto the parent run")
    parser.add_argument("--out", type=Path, help="also write the report's files into OUT")
    args = parser.parse_args(argv)
    try:
        uri = resolve_uri(redaction.hide_credentials(args.tracking_uri))
        tracker, parent = _locate(uri, args.run_id, args.experiment)
        report = build_report(tracker, parent)
    except (ReportError, MlflowException) as exc:
        print(f"rnnsweep.report: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    print(report.markdown, end="")
    if args.out:
        written = report.save(args.out)
        print(f"wrote {len(written)} files under {args.out}")
    if not args.no_log:
        tracker.log_artifacts(parent, report.artifacts())
        print(f"logged {', '.join(report.artifacts())} on parent run {parent}")
    return 0


def _locate(uri: str, run_id: str | None, experiment: str | None) -> tuple[Tracker, str]:
    """The tracker for the parent run's experiment, and the parent run id. Nothing is created:
    a mistyped path or name is an error, not a new empty store or experiment."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"no MLflow store at {uri}")
    client = MlflowClient(tracking_uri=redaction.connection_uri(uri))
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise ReportError(f"no run {run_id!r} in {uri}") from None
        experiment = client.get_experiment(run.info.experiment_id).name
        return Tracker(uri, experiment), run_id
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no experiment {experiment!r} in {uri}")
    latest = client.search_runs([found.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    if not latest:
        raise ReportError(f"experiment {experiment!r} has no sweep parent runs")
    return Tracker(uri, experiment), latest[0].info.run_id


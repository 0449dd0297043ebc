"""The report as text: the trials table, Markdown for a terminal or MLflow, and one
self-contained HTML page that reads well inside MLflow's artifact viewer."""

from __future__ import annotations

import base64
import html as html_
from typing import TYPE_CHECKING

from rnnsweep.text import cut, plain

if TYPE_CHECKING:
    from rnnsweep.report.model import Finding, Report, Trial

# Summary metrics shown as table columns, in this order, when any trial has them.
KEY_METRICS = (
    "latency_ms", "latency_ms_per_seq", "throughput_seq_per_s",
    "latency_ms_fused", "latency_ms_loop", "fused_speedup", "impl_max_abs_diff",
    "step_time_ms", "final_loss", "nonfinite_steps", "max_grad_norm", "max_grad_norm_clipped",
    "final_grad_scale", "stream_latency_ms_p50", "stream_latency_ms_p99", "stream_max_abs_diff",
    "export_torchscript_max_abs_diff", "export_onnx_max_abs_diff", "peak_mem_mb",
)
# A timed metric's IQR, shown as "median ±IQR" in its cell.
IQR_OF = {"latency_ms": "latency_iqr_ms", "latency_ms_fused": "latency_fused_iqr_ms",
          "latency_ms_loop": "latency_loop_iqr_ms"}
REASON_CHARS = 80


def table(trials: list[Trial], axes: list[str]) -> tuple[list[str], list[list[str]]]:
    metrics = [m for m in KEY_METRICS if any(m in t.metrics for t in trials)]
    parity = any(t.parity_checked for t in trials)
    timed = any(t.timed for t in trials)
    columns = ["run", *axes, *metrics, *(["parity"] if parity else []),
               *(["timing"] if timed else []), "outcome"]
    rows = []
    for t in trials:
        outcome = t.outcome + (" (reused)" if t.reused else "") + (
            f": {cut(t.reason, REASON_CHARS)}" if t.reason else "")
        row = [t.run_id[:8], *(t.params.get(a, "-") for a in axes),
               *(_cell(t, m) for m in metrics)]
        if parity:
            failed = t.parity_failures
            row.append("failed: " + ", ".join(failed) if failed else
                       "ok" if t.parity_checked else "-")
        if timed:
            row.append(("noisy" if t.noisy else "clean") if t.timed else "-")
        rows.append([*row, outcome])
    return columns, rows


def markdown(report: Report) -> str:
    lines = [f"# Sweep report: {report.title}", "",
             f"Parent run `{report.parent_run_id}` · {len(report.trials)} trials · "
             f"axes: {', '.join(report.axes) or 'none'} · device: {report.device}", ""]
    lines += markdown_table(report.columns, report.rows)
    if report.findings:
        lines += ["", "## Findings", ""]
        lines += markdown_table(["finding", "value", "detail"],
                                 [[f.what, value(f), f.detail] for f in report.findings])
    if report.notes:
        lines += ["", "## Notes"]
        for note in report.notes:  # a blank line before each group's heading
            lines += [note] if note.startswith("- ") else ["", note, ""]
    if report.plots:
        # Named, not embedded: in MLflow's artifact viewer a relative image path does not
        # resolve, and ![plots/x.png](plots/x.png) showed as its text; report.html has
        # the plots inline.
        lines += ["", "## Plots", "", "PNG files beside this report (report.html shows them "
                  "inline):", ""] + [f"- {p}" for p in report.plots]
    return "\n".join(lines) + "\n"


# Scrolling tables and plots scaled to the frame: MLflow's artifact viewer is narrower than
# a 1100-px plot or a 20-column table.
# Headers wrap at any character (metric names are long and unbroken) and the outcome's
# reason wraps at words, so a wide sweep's table fits the viewer's width instead of
# running off its right edge; numbers stay on one line.
STYLE = ("body{font-family:sans-serif;margin:8px;max-width:100%} "
         ".scroll{overflow-x:auto;max-width:100%} "
         "table{border-collapse:collapse;font-size:13px;max-width:100%} "
         "td,th{border:1px solid #ccc;padding:2px 4px;text-align:right;white-space:nowrap} "
         "th{white-space:normal;overflow-wrap:anywhere;min-width:3em;vertical-align:bottom} "
         "td:last-child{text-align:left;white-space:normal;min-width:10em} "
         "img{max-width:100%;height:auto} .noisy{background:#fff3cd}")


def html(report: Report) -> str:
    def run_link(run_id: str, text: str) -> str:
        # The MLflow UI's route for a run, from the server's root; target=_top leaves the
        # artifact viewer's frame.
        href = f"/#/experiments/{report.experiment_id}/runs/{run_id}"
        return f'<a href="{html_.escape(href)}" target="_top">{html_.escape(text)}</a>'

    by_short = {t.run_id[:8]: t for t in report.trials}
    head = "".join(f"<th>{html_.escape(c)}</th>" for c in report.columns)
    body = []
    for row in report.rows:
        trial = by_short.get(row[0])
        cells = [run_link(trial.run_id, row[0]) if trial else html_.escape(row[0])]
        cells += [html_.escape(c) for c in row[1:]]
        css = ' class="noisy"' if trial and trial.noisy else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts = [f"<h1>Sweep report: {html_.escape(report.title)}</h1>",
             f"<p>Parent run {run_link(report.parent_run_id, report.parent_run_id)} · "
             f"{len(report.trials)} trials · device: {html_.escape(report.device)}</p>",
             f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>']
    if report.findings:
        rows = "".join(f"<tr><td>{html_.escape(f.what)}</td><td>{html_.escape(value(f))}</td>"
                       f"<td>{html_.escape(f.detail)}</td></tr>" for f in report.findings)
        parts += ["<h2>Findings</h2>", '<div class="scroll"><table><tr><th>finding</th>'
                  f"<th>value</th><th>detail</th></tr>{rows}</table></div>"]
    if report.notes:
        parts += ["<h2>Notes</h2>", _notes_html(report.notes)]
    for path, png in report.plots.items():
        data = base64.b64encode(png).decode()
        parts.append(f'<h3>{html_.escape(path)}</h3><img alt="{html_.escape(path)}" '
                     f'src="data:image/png;base64,{data}">')
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width'>"
            f"<style>{STYLE}</style><title>{html_.escape(report.title)}</title></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def _notes_html(notes: list[str]) -> str:
    """Headings as paragraphs, each followed by its ``- `` items as a list."""
    out, items = [], []
    for note in [*notes, ""]:
        if note.startswith("- "):
            items.append(f"<li>{html_.escape(note[2:])}</li>")
            continue
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if note:
            out.append(f"<p>{html_.escape(note)}</p>")
    return "".join(out)


def value(finding: Finding) -> str:
    if finding.unit == "x":
        return f"{finding.value:.2f}x"
    return f"{plain(finding.value, 4)} {finding.unit}"


def _cell(trial: Trial, metric: str) -> str:
    if metric not in trial.metrics:
        return "-"
    text = plain(trial.metrics[metric], 4)
    iqr = trial.metrics.get(IQR_OF.get(metric, ""))
    return f"{text} ±{plain(iqr)}" if iqr else text


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    # Padded to equal widths so the same text reads as a table in a terminal too.
    cells = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in [columns, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines

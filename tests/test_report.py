"""The sweep report, built from real sweeps recorded in real MLflow stores.

Three toy sweeps (batch, fused vs. loop, clipping) run once per module through the CLI in
subprocesses, concurrently, each into a SQLite store of its own. The report is then read
back through MLflow's API only, exactly as ``python -m rnnsweep.report`` reads it.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import BASIC_LAUNCHER, run_cli, start_cli, toy
from matplotlib.image import imread

from rnnsweep.report import plots
from rnnsweep.report.build import (
    Report,
    Trial,
    build_report,
    sweep_axes,
    write_report,
    write_report_safely,
)
from rnnsweep.report.cli import main
from rnnsweep.tracking import ROLE_TAG, Tracker

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "report"
SWEEP_TIMEOUT_S = 240
CLI_TIMEOUT_S = 120

# Toy sizes, Hydra's in-process launcher, one torch thread per trial: the three sweeps run
# side by side on two cores without oversubscribing them.
COMMON = [BASIC_LAUNCHER, "hardware.num_cpus=1"]
# The ready sweeps from sweeps/, shrunk to toy sizes on the command line.
SWEEPS = {
    "batch": ["+sweep=batch_scaling", "batch=1,8", "seq_len=10", "workload=bench"],
    "fused": ["+sweep=fused_vs_loop", "model=lstm,gru", "batch=4", "seq_len=10"],
    # Experiment 4 in miniature: a tanh RNN with scaled-up recurrent weights, plain SGD.
    "clipping": ["+sweep=clipping", "steps=8", "batch=4", "seq_len=20"],
}
PLOTS = {"batch": "plots/batch_scaling.png", "fused": "plots/fused_vs_loop.png",
         "clipping": "plots/training_curves.png"}


@dataclass
class Sweep:
    directory: Path
    uri: str
    tracker: Tracker
    parent: str


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Sweep]:
    started = {}
    try:
        for name, overrides in SWEEPS.items():
            directory = tmp_path_factory.mktemp(f"sweep-{name}")
            uri = f"sqlite:///{directory / 'mlflow.db'}"
            # cwd is the sweep's directory: MLflow's default artifact root (./mlruns) and
            # Hydra's outputs land there, not in the repository.
            args = ["-m", *toy(*COMMON, *overrides), f"tracking.uri={uri}",
                    f"hydra.sweep.dir={directory / 'multirun'}"]
            started[name] = directory, start_cli(args, directory, merge_output=True)
        deadline = time.monotonic() + SWEEP_TIMEOUT_S
        found = {}
        for name, (directory, proc) in started.items():
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"sweep {name} failed:\n{output[-4000:]}"
            uri = f"sqlite:///{directory / 'mlflow.db'}"
            tracker = Tracker(uri, "rnnsweep")
            parents = tracker.client.search_runs([tracker.experiment_id],
                                                 f"tags.`{ROLE_TAG}` = 'sweep'")
            assert len(parents) == 1, f"sweep {name}: {len(parents)} parent runs\n{output}"
            found[name] = Sweep(directory, uri, tracker, parents[0].info.run_id)
        return found
    finally:
        for _, proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def reports(sweeps) -> dict[str, Report]:
    return {name: build_report(s.tracker, s.parent) for name, s in sweeps.items()}


def column(report: Report, name: str) -> list[str]:
    index = report.columns.index(name)
    return [row[index] for row in report.rows]


@pytest.mark.slow  # three CLI sweeps in subprocesses
def test_batch_report_has_a_row_per_trial_and_the_per_sequence_speedup(sweeps, reports):
    report = reports["batch"]
    assert report.axes == ["batch"]
    assert report.columns[:2] == ["run", "batch"] and report.columns[-1] == "outcome"
    for metric in ("latency_ms", "latency_ms_per_seq", "throughput_seq_per_s"):
        assert metric in report.columns
    assert column(report, "batch") == ["1", "8"]
    assert column(report, "outcome") == ["OK", "OK"]
    children = {run.info.run_id: run for run in sweeps["batch"].tracker.children(
        sweeps["batch"].parent)}
    assert {t.run_id for t in report.trials} == set(children)
    # The speedup is the smallest batch's time per sequence over the largest one's.
    per_seq = {t.params["batch"]: t.metrics["latency_ms_per_seq"] for t in report.trials}
    (finding,) = report.findings
    assert finding.what == "per-sequence speedup, batch 8 over batch 1"
    assert finding.value == pytest.approx(per_seq["1"] / per_seq["8"])
    assert f"{finding.value:.2f}x" in report.markdown
    assert "CPU" in report.device
    assert list(report.plots) == [PLOTS["batch"]]


@pytest.mark.slow  # three CLI sweeps in subprocesses
def test_fused_vs_loop_sweep_gives_bars_with_each_cells_speedup(reports):
    report = reports["fused"]
    assert report.axes == ["model.cell"]
    assert column(report, "model.cell") == ["gru", "lstm"]
    assert list(report.plots) == [PLOTS["fused"]]
    speedups = {f.what: f.value for f in report.findings}
    for trial in report.trials:
        cell = trial.params["model.cell"]
        assert speedups[f"fused speedup over loop ({cell})"] == pytest.approx(
            trial.metrics["fused_speedup"])
        # Both implementations compute the same function (same weights).
        assert trial.metrics["impl_max_abs_diff"] < 1e-4


@pytest.mark.slow  # three CLI sweeps in subprocesses
def test_clipping_sweep_gives_loss_and_grad_norm_curves(reports):
    report = reports["clipping"]
    assert report.axes == ["clipping.max_norm"]
    assert column(report, "clipping.max_norm") == ["None", "1.0", "5.0"]
    assert list(report.plots) == [PLOTS["clipping"]]
    # Each row carries its own trial's numbers: clipped norms stay at or under max_norm.
    for max_norm, clipped in zip(column(report, "clipping.max_norm"),
                                 column(report, "max_grad_norm_clipped"), strict=True):
        if max_norm != "None":
            assert float(clipped) <= float(max_norm) * 1.001


@pytest.mark.slow  # three CLI sweeps in subprocesses
@pytest.mark.parametrize("sweep", list(PLOTS))
def test_plots_are_readable_pngs_with_coloured_content(reports, sweep):
    png = reports[sweep].plots[PLOTS[sweep]]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{sweep}-{Path(PLOTS[sweep]).name}").write_bytes(png)  # for a human look
    image = imread(io.BytesIO(png), format="png")
    width, height = plots.SIZE_PX
    assert image.shape[:2] == (height, width)
    rgb = image[..., :3].reshape(-1, 3)
    packed = (rgb * 255).round().astype(np.int64) @ np.array([65536, 256, 1])
    assert len(np.unique(packed)) > 50  # lines, text and antialiasing, not a flat fill
    assert (rgb.min(axis=1) < 0.9).mean() > 0.01  # not a blank canvas
    assert (np.ptp(rgb, axis=1) > 0.3).any()  # coloured data series, not only black text


@pytest.mark.slow  # three CLI sweeps in subprocesses
def test_write_report_logs_markdown_html_and_plots_on_the_parent(sweeps):
    sweep = sweeps["fused"]
    report = write_report(sweep.tracker, sweep.parent)
    client = sweep.tracker.client
    top = {a.path for a in client.list_artifacts(sweep.parent)}
    assert {"report.md", "report.html", "plots"} <= top
    assert {a.path for a in client.list_artifacts(sweep.parent, "plots")} == {PLOTS["fused"]}
    logged = Path(client.download_artifacts(sweep.parent, "report.md", str(sweep.directory)))
    assert logged.read_text() == report.markdown
    # The trials are children: nothing was logged onto them.
    for trial in report.trials:
        assert "report.md" not in {a.path for a in client.list_artifacts(trial.run_id)}


@pytest.mark.slow  # three CLI sweeps in subprocesses
def test_report_failure_at_the_end_of_a_sweep_is_a_warning_not_an_exception(sweeps, capsys):
    # A trial's run id is not a sweep's parent: it has no children, so no report.
    sweep = sweeps["batch"]
    trial = next(sweep.tracker.children(sweep.parent)).info.run_id
    assert write_report_safely(sweep.tracker, trial) is None
    assert write_report_safely(sweep.tracker, "f" * 32) is None  # no such run at all
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2
    assert all(w.startswith("rnnsweep: warning: no report for parent run") for w in warnings)
    assert "report.md" not in {a.path for a in sweep.tracker.client.list_artifacts(trial)}


def test_axes_merge_params_that_one_choice_sets_together():
    def trial(**params: str) -> Trial:
        return Trial("id", "OK", "", params, {}, "cpu")

    # precision=fp32,bf16,fp16 x batch=1,8: three precision params move together.
    trials = [trial(batch=b, **{"precision.name": n, "precision.autocast_dtype": d,
                                "precision.grad_scaler": s, "tracking.uri": f"u{b}"})
              for b in ("1", "8")
              for n, d, s in (("fp32", "None", "False"), ("bf16", "bfloat16", "False"),
                              ("fp16", "float16", "True"))]
    assert sweep_axes(trials) == ["precision.name", "batch"]


@pytest.mark.slow  # three CLI sweeps in subprocesses
def test_cli_prints_the_table_and_logs_the_report(sweeps, tmp_path):
    sweep = sweeps["batch"]
    # The default store, sqlite:///mlflow.db, is resolved against the working directory.
    result = run_cli(["--experiment", "rnnsweep", "--out", str(tmp_path)], sweep.directory,
                     CLI_TIMEOUT_S, module="rnnsweep.report")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| run"))
    assert [c.strip() for c in header.strip("|").split("|")][:2] == ["run", "batch"]
    assert sum(line.startswith("| ") and line.split("|")[2].strip() in ("1", "8")
               for line in lines) == 2
    assert "per-sequence speedup, batch 8 over batch 1" in result.stdout
    assert (tmp_path / "report.md").is_file() and (tmp_path / PLOTS["batch"]).is_file()
    logged = {a.path for a in sweep.tracker.client.list_artifacts(sweep.parent, "plots")}
    assert logged == {PLOTS["batch"]}


@pytest.mark.slow  # three CLI sweeps in subprocesses
def test_cli_no_log_only_prints(sweeps, capsys):
    sweep = sweeps["clipping"]
    client = sweep.tracker.client
    before = [(a.path, a.file_size) for a in client.list_artifacts(sweep.parent)]
    assert main(["--run-id", sweep.parent, "--tracking-uri", sweep.uri, "--no-log"]) == 0
    assert "| clipping.max_norm |" in capsys.readouterr().out
    assert [(a.path, a.file_size) for a in client.list_artifacts(sweep.parent)] == before


@pytest.mark.slow  # three CLI sweeps in subprocesses
def test_cli_unknown_run_id_is_a_one_line_error_and_exit_2(sweeps):
    result = run_cli(["--run-id", "0" * 32, "--tracking-uri", sweeps["batch"].uri],
                     sweeps["batch"].directory, CLI_TIMEOUT_S, module="rnnsweep.report")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"rnnsweep.report: error: no run '{'0' * 32}' in {sweeps['batch'].uri}"]


# --- report logic on sweeps recorded through the Tracker (no CLI, no Ray) -------------------

from recorded import record_sweep  # noqa: E402

from rnnsweep import text  # noqa: E402
from rnnsweep.contract import REUSED_TAG_PREFIX  # noqa: E402
from rnnsweep.report import sections  # noqa: E402


@pytest.fixture
def tracker(mlflow_store) -> Tracker:
    return Tracker(mlflow_store.uri, "rnnsweep")


@pytest.mark.parametrize(("value", "shown"), [
    (6790.4, "6,790"), (0.000123, "0.000123"), (12.345, "12.3"), (1.5, "1.5"), (128.0, "128"),
    (1e-9, "0.000000001"), (float("nan"), "nan")])
def test_numbers_are_plain(value, shown):
    assert text.plain(value) == shown


def test_reasons_are_cut_at_word_boundaries():
    reason = "precision=fp16 (autocast + GradScaler) needs CUDA; this trial runs on cpu."
    cut = text.cut(reason, 40)
    assert len(cut) <= 40 and cut.endswith("…")
    assert reason.startswith(cut[:-1]) and reason[len(cut) - 1] == " "  # ends on a whole word
    assert text.cut("short", 40) == "short"


def seq_len_report(times: dict[int, float]) -> Report:
    trials = [Trial(f"run{n}", "OK", "", {"seq_len": str(n)}, {"latency_ms": ms}, "cpu")
              for n, ms in times.items()]
    report = Report("p", "sweep", "cpu", ["seq_len"], trials, [], [])
    sections.seq_len_section(report)
    return report


def test_a_linear_fit_is_called_linear_with_its_r2_and_standard_error():
    report = seq_len_report({25: 1.0, 50: 2.02, 100: 3.98, 200: 8.0})
    (finding,) = report.findings
    assert finding.value == pytest.approx(0.04, rel=0.02)
    assert "R² 1.000: linear" in finding.detail and "(SE)" in finding.detail


def test_a_curved_fit_is_not_called_linear():
    report = seq_len_report({25: 1.0, 50: 4.0, 100: 16.0, 200: 64.0, 400: 256.0})
    (finding,) = report.findings
    assert "not linear" in finding.detail
    fit = sections.fit_line(np.array([25.0, 50, 100, 200, 400]),
                            np.array([1.0, 4, 16, 64, 256]))
    assert fit.r2 < sections.LINEAR_R2 and fit.slope_se > 0


def test_precision_report_gives_speedup_over_fp32_and_lists_unsupported(tracker):
    parent = record_sweep(tracker, [[f"precision={p}", "workload=train", "hardware=cpu"]
                                    for p in ("fp32", "bf16", "fp16")])
    report = build_report(tracker, parent)
    assert report.axes == ["precision.name"]
    by_name = {t.params["precision.name"]: t for t in report.trials}
    assert by_name["fp16"].outcome == "UNSUPPORTED"
    notes = "\n".join(report.notes)
    assert f"{by_name['fp16'].run_id[:8]} (precision.name=fp16): UNSUPPORTED: " \
           "precision=fp16 (autocast + GradScaler) needs CUDA" in notes
    speedups = {f.what: f.value for f in report.findings if "over fp32" in f.what}
    if by_name["bf16"].ok:  # bf16 LSTM needs AVX-512 on CPU; otherwise it is in the notes
        base, bf16 = by_name["fp32"].metrics, by_name["bf16"].metrics
        assert speedups["bf16 speedup over fp32, training step"] == pytest.approx(
            base["step_time_ms"] / bf16["step_time_ms"])
    else:
        assert speedups == {} and "precision.name=bf16): UNSUPPORTED" in notes
    assert "fp16 speedup" not in " ".join(speedups)


@pytest.mark.slow  # exports to TorchScript and ONNX
def test_deployment_report_has_parity_columns_and_a_verdict(tracker):
    parent = record_sweep(tracker, [["workload=deploy", "hardware=cpu", f"batch={b}",
                                     "chunk_len=5", "repeats=2"] for b in (2, 3)])
    report = build_report(tracker, parent)
    assert "parity" in report.columns and "stream_max_abs_diff" in report.columns
    assert column(report, "parity") == ["ok", "ok"], report.markdown
    (finding,) = [f for f in report.findings if f.what.startswith("deployment parity")]
    assert finding.value == 2 and finding.detail == "parity: every path matches eager"
    assert "streaming" in finding.what and "onnx" in finding.what


def test_reused_runs_are_in_the_report_marked_reused(tracker):
    first = record_sweep(tracker, [["batch=2", "workload=bench"], ["batch=4", "workload=bench"]])
    reused = {t.params["batch"]: t.run_id for t in build_report(tracker, first).trials}
    second = record_sweep(tracker, [["batch=8", "workload=bench"]],
                          parent_tags={f"{REUSED_TAG_PREFIX}{reused['2']}": "batch=2",
                                       f"{REUSED_TAG_PREFIX}{reused['4']}": "batch=4"})
    report = build_report(tracker, second)
    assert column(report, "batch") == ["2", "4", "8"]
    assert [t.reused for t in report.trials] == [True, True, False]
    assert column(report, "outcome")[:2] == ["OK (reused)", "OK (reused)"]
    assert any("2 trials reused" in n for n in report.notes)
    # A sweep that reused everything still gets a complete report.
    everything = record_sweep(tracker, [], parent_tags={
        f"{REUSED_TAG_PREFIX}{run_id}": f"batch={batch}" for batch, run_id in reused.items()})
    assert column(build_report(tracker, everything), "outcome") == ["OK (reused)"] * 2


def test_noisy_trials_are_flagged_in_table_notes_and_html(tracker):
    parent = record_sweep(tracker, [["batch=2", "workload=bench", "hardware.exclusive=false"],
                                    ["batch=4", "workload=bench", "hardware.exclusive=false"]])
    report = build_report(tracker, parent)
    assert column(report, "timing") == ["noisy", "noisy"]
    first = report.trials[0]
    # The median ±IQR; one timing block has no IQR to show.
    assert ("±" in column(report, "latency_ms")[0]) == (first.metrics["latency_iqr_ms"] > 0)
    notes = "\n".join(report.notes)
    assert "Noisy timings in 2 of 2 timed trials" in notes
    assert "shared its device (hardware.exclusive=false)" in notes
    page = report.html
    assert 'class="noisy"' in page and "overflow-x:auto" in page and "max-width:100%" in page
    run = report.trials[0]
    assert f'href="/#/experiments/{run.experiment_id}/runs/{run.run_id}"' in page


def test_the_end_of_a_sweep_warns_of_noisy_timings(tracker, capsys):
    parent = record_sweep(tracker, [["batch=2", "workload=bench", "hardware.exclusive=false"]])
    assert write_report_safely(tracker, parent) is not None
    err = capsys.readouterr().err
    assert "rnnsweep: warning: 1 of 1 timed trials have noisy timings" in err


def test_csv_export_has_one_typed_row_per_trial(tracker, tmp_path):
    pandas = pytest.importorskip("pandas")
    parent = record_sweep(tracker, [["batch=2", "workload=bench"], ["batch=4", "workload=bench"]])
    out = tmp_path / "trials.csv"
    assert main(["--run-id", parent, "--tracking-uri", tracker.uri, "--no-log",
                 "--csv", str(out)]) == 0
    frame = pandas.read_csv(out)
    assert len(frame) == 2
    assert frame["batch"].tolist() == [2, 4] and frame["batch"].dtype.kind == "i"
    assert frame["latency_ms"].dtype.kind == "f" and (frame["latency_ms"] > 0).all()
    assert frame["outcome"].tolist() == ["OK", "OK"]
    assert "loss" not in frame and not any("/" in c for c in frame.columns)
    parquet = tmp_path / "trials.parquet"
    assert main(["--run-id", parent, "--tracking-uri", tracker.uri, "--no-log",
                 "--csv", str(parquet)]) == 0
    assert pandas.read_parquet(parquet)["batch"].tolist() == [2, 4]


def test_many_trials_are_drawn_as_one_artist_not_a_bar_each(monkeypatch):
    # A Rectangle per bar cost a thousand-trial sweep's driver 25 MB at its close.
    drawn = []
    monkeypatch.setattr(plots, "_png", lambda fig: drawn.append(fig) or b"png")
    values = [1.0 + (i % 7) / 10 for i in range(plots.MAX_NAMED_BARS + 1000)]
    plots.metric_bars([str(i) for i in range(len(values))], {"latency (ms)": values},
                      sweep="seed=range(1040)", device="CPU")
    (ax,) = drawn[0].axes
    assert not ax.patches and len(ax.collections) == 1
    segments = ax.collections[0].get_segments()
    assert len(segments) == len(values) and segments[5][1][1] == pytest.approx(values[5])
    few = values[:plots.MAX_NAMED_BARS]
    plots.metric_bars([str(i) for i in range(len(few))], {"latency (ms)": few},
                      sweep="seed=range(40)", device="CPU")
    assert len(drawn[1].axes[0].patches) == len(few)  # named bars, each with its value


def test_loading_without_a_parent_run_id_names_what_is_missing(mlflow_store):
    import rnnsweep

    # An empty id once read the latest sweep of experiment None: "no experiment None".
    with pytest.raises(rnnsweep.ConfigError, match="no sweep named: give its parent run id"):
        rnnsweep.load("", tracking_uri=mlflow_store.uri)

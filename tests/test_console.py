"""The sweep on the terminal: trial names, result lines, the closing table, and the quiet
libraries. The sink is fed real trial records (``run_trial`` on the ready sweeps' own
trials, at toy sizes) and writes to a rich console over a string buffer, as a TTY or as
a log."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from conftest import cli_env, cli_paths, run_cli, toy
from rich.console import Console

from rnnsweep.preflight.validation import check_overrides
from rnnsweep.record import FAILED, TrialRecord
from rnnsweep.sweep.console import ConsoleSink, headline, number, shorten
from rnnsweep.sweep.naming import swept_keys, trial_name, trial_names
from rnnsweep.sweep.sink import TrialInfo
from rnnsweep.trial.run import run_trial

# --- names -------------------------------------------------------------------------------


def test_a_trial_is_named_by_the_keys_its_sweep_varies_and_only_those():
    overrides = [["batch=1", "seq_len=10", "model=gru", "tracking.uri=sqlite:///x.db"],
                 ["batch=8", "seq_len=10", "model=lstm", "tracking.uri=sqlite:///x.db"],
                 ["batch=8", "seq_len=10", "tracking.uri=sqlite:///x.db"]]
    assert swept_keys(overrides) == {"batch", "model"}  # model: one trial leaves the default
    assert trial_names(overrides) == ["batch=1,model=gru", "batch=8,model=lstm", "batch=8"]
    assert trial_names([["seq_len=10"]]) == ["trial"]  # nothing varies
    # A trial that cannot see its sweep keeps what the user set, less where results go.
    assert trial_name(["batch=8", "tracking.uri=x", "ray.max_retries=1", "+sweep=clipping",
                       "hydra.verbose=true"]) == "batch=8"


@pytest.mark.parametrize("sweep, keys", [
    ("batch_scaling", {"batch"}),
    ("fused_vs_loop", {"model"}),
    ("precision", {"precision"}),
    ("clipping", {"clipping.max_norm"}),
    ("deployment", {"model", "batch", "chunk_len"}),
])
def test_ready_sweeps_name_their_trials_by_their_own_axes(sweep, keys):
    checked = check_overrides(toy(f"+sweep={sweep}"), multirun=True)
    names = trial_names(checked.overrides)
    assert len(set(names)) == len(names)
    for name in names:
        assert {part.split("=")[0] for part in name.split(",")} == keys, name


# --- lines and the table -----------------------------------------------------------------

# Each ready sweep's question, and the labels its result lines must carry.
HEADLINES = {
    "batch_scaling": ["batch=1,8", "workload=bench"],
    "fused_vs_loop": ["model=lstm,gru", "batch=2"],
    "precision": ["precision=fp32,bf16", "steps=2"],
    "clipping": ["clipping.max_norm=null,1.0", "steps=2", "seq_len=5"],
    "deployment": ["model=lstm", "batch=1,2", "chunk_len=5", "repeats=1"],
}
LABELS = {
    "batch_scaling": ["ms/batch", "ms/seq", "seq/s"],
    "fused_vs_loop": ["fused ms", "loop ms", "speedup", "parity"],
    "precision": ["step ms", "seq/s", "loss"],
    "clipping": ["max grad norm", "clipped", "loss"],
    "deployment": ["p50 ms", "p99 ms", "parity"],
}


_RUN: dict[str, tuple[list[TrialInfo], list[TrialRecord]]] = {}


def ready_sweep(sweep: str) -> tuple[list[TrialInfo], list[TrialRecord]]:
    """Two real trials of a ready sweep, run in-process at toy sizes (once per session)."""
    if sweep not in _RUN:
        checked = check_overrides(toy(f"+sweep={sweep}", "hardware=cpu", *HEADLINES[sweep]),
                                  True)
        names = trial_names(checked.overrides)
        infos = [TrialInfo(i, n, tuple(o)) for i, (n, o) in
                 enumerate(zip(names, checked.overrides, strict=True))]
        _RUN[sweep] = infos, [run_trial(cfg) for cfg in checked.trials]
    return _RUN[sweep]


def log_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


def tty_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120), out


def feed(sink: ConsoleSink, infos: list[TrialInfo], records: list[TrialRecord]) -> None:
    sink.submitted(infos)
    for info, record in zip(infos, records, strict=True):
        sink.started(info.idx)
        sink.finished(info.idx, record)
    sink.ended()


# Precision, fused-vs-loop and deployment trials take seconds each (bf16 probing, two
# timed implementations, exports): slow tier. ``headline`` itself is checked fast below.
@pytest.mark.parametrize("sweep", [
    pytest.param(s, marks=[pytest.mark.slow] if s not in ("batch_scaling", "clipping") else [])
    for s in HEADLINES])
def test_in_a_log_each_finished_trial_is_one_line_with_the_sweeps_headline(sweep):
    infos, records = ready_sweep(sweep)
    console, out = log_console()
    feed(ConsoleSink(console), infos, records)
    text = out.getvalue()
    # One result line per trial and no progress lines; a noisy timing's warning line
    # ("  #0 warning: ...") follows its result line.
    lines = [line for line in text.splitlines() if re.match(r"  #\d+ \[", line)]
    assert len(lines) == len(infos), text
    for info, record, line in zip(infos, records, lines, strict=True):
        assert line.startswith(f"  #{info.idx} [{record.outcome}] {info.name}  "), line
        if record.outcome == "OK":
            missing = [label for label in LABELS[sweep] if f" {label} " not in line]
            assert not missing, f"{line!r} lacks {missing}"
    # Then one table, after every line: a row per trial, not the lines again.
    table = text[text.index("rnnsweep: trials"):]
    assert text.index(lines[-1]) < text.index("rnnsweep: trials")
    assert not any(line in table for line in lines)
    for info in infos:
        for part in info.name.split(","):
            assert re.search(rf"\|\s*{re.escape(part.split('=')[1])}\s*\|", table), part
    header = table.splitlines()[2]
    assert all(label in header for label in LABELS[sweep]), header


def test_the_log_table_is_never_wrapped_and_a_failure_reason_is_cut_at_a_word():
    infos = [TrialInfo(i, f"batch={b}", (f"batch={b}",)) for i, b in enumerate((1, 2))]
    reason = "RuntimeError: " + " ".join(["injected failure at step 1"] * 12)
    records = [TrialRecord({}, metrics={"latency_ms": 12345.678, "latency_ms_per_seq": 2e-5,
                                        "throughput_seq_per_s": 81.0}),
               TrialRecord({}, outcome=FAILED, reason=reason)]
    console, out = log_console()
    feed(ConsoleSink(console), infos, records)
    lines = out.getvalue().splitlines()
    assert "ms/batch 12,346  ms/seq 2.00e-05  seq/s 81" in lines[0]
    failed = lines[1]
    assert failed.startswith("  #1 [FAILED] batch=2  (RuntimeError: injected failure")
    shown = failed.split("(", 1)[1].split("…)", 1)[0]
    assert reason.startswith(shown) and reason[len(shown)] == " "  # cut between words
    table = lines[lines.index("rnnsweep: trials"):]
    assert len({len(row) for row in table[1:] if row}) == 1  # every row one width: no wrap


def test_a_noisy_timing_gets_a_warning_line_and_is_marked_in_the_table():
    infos = [TrialInfo(i, f"batch={b}", (f"batch={b}",)) for i, b in enumerate((32, 64))]
    noisy = TrialRecord({}, metrics={"latency_ms": 17.0},
                        tags={"rnnsweep.timing.noisy": "true",
                              "rnnsweep.timing.noise_reason": "IQR 40% of the median"})
    quiet = TrialRecord({}, metrics={"latency_ms": 30.0},
                        tags={"rnnsweep.timing.noisy": "false"})
    for console, out in (log_console(), tty_console()):
        feed(ConsoleSink(console), infos, [noisy, quiet])
        text = out.getvalue()
        assert "#0 warning: batch=32: timing is noisy (IQR 40% of the median)" in text
        assert text.count("timing is noisy") == 1 and text.count("OK (noisy)") == 1


def test_on_a_tty_one_live_display_and_the_closing_table():
    infos, records = ready_sweep("batch_scaling")
    console, out = tty_console()
    sink = ConsoleSink(console, title="batch_scaling")
    assert sink.on_tty
    sink.submitted(infos)
    sink.started(0)
    assert sink.counts() == {"done": 0, "running": 1, "pending": 1, "failed": 0, "reused": 0,
                             "cancelled": 0}
    sink.finished(0, records[0])
    sink.cancelled(1, "interrupted (SIGINT)")
    sink.ended()
    text = out.getvalue()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "1 running · 1 pending · 0 failed" in plain  # the live display's counts
    assert "ETA" in plain
    assert "  #0 [OK]" not in plain.split("latest:")[0]  # no line per OK trial on a TTY
    table = plain[plain.index("rnnsweep: trials of batch_scaling"):]
    assert "KILLED" in table and "interrupted (SIGINT)" in table
    assert "ms/seq" in table


def test_headline_follows_what_the_sweep_varies_and_measures():
    training = {"step_time_ms": 1.0, "final_loss": 0.5, "max_grad_norm": 9.0}
    assert [m.label for m in headline(training, {"clipping.max_norm"})][:2] == [
        "max grad norm", "clipped"]
    assert headline(training, {"precision"})[0].label == "step ms"
    assert [m.label for m in headline(training, {"seed"})] == ["step ms", "loss"]
    assert headline({}, {"batch"}) == ()
    assert headline({"fused_speedup": 2.0, "latency_ms": 1.0}, {"model"})[2].label == "speedup"
    assert headline({"stream_latency_ms_p50": 1.0}, {"chunk_len"})[0].label == "p50 ms"
    assert headline({"latency_ms": 1.0, "step_time_ms": 2.0}, {"batch"})[0].label == "ms/batch"


def test_numbers_are_plain_and_reasons_cut_at_words():
    assert [number(v) for v in (6790.4, 0.4316, 11.37, 0.0, 3e-7, float("nan"))] == [
        "6,790", "0.432", "11.4", "0", "3.00e-07", "nan"]
    assert shorten("one two three", 9) == "one two…"
    assert shorten("first line\nsecond") == "first line"


def test_a_single_run_is_one_line_and_no_table():
    console, out = log_console()
    feed(ConsoleSink(console), [TrialInfo(0, "trial")],
         [TrialRecord({}, metrics={"step_time_ms": 2.0, "final_loss": 0.25})])
    assert out.getvalue().splitlines() == ["  #0 [OK] trial  step ms 2  loss 0.25  (1/1 done)"]


def test_trials_known_by_name_only_get_their_sweeps_columns_and_headline():
    """Hydra's basic launcher records each trial where it ran, one at a time, by name."""
    console, out = log_console()
    sink = ConsoleSink(console)
    for idx, norm in enumerate(("null", "1.0")):
        sink.submitted([TrialInfo(idx, f"clipping.max_norm={norm},steps=2")])
        sink.finished(idx, TrialRecord({}, metrics={"max_grad_norm": 9.0, "final_loss": 0.5,
                                                    "max_grad_norm_clipped": 1.0,
                                                    "step_time_ms": 3.0}))
    sink.ended()
    table = out.getvalue()[out.getvalue().index("rnnsweep: trials"):]
    header = table.splitlines()[2]
    assert "clipping.max_norm" in header and "steps" not in header
    assert "max grad norm" in header and "step ms" not in header


# --- quiet libraries -----------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter importing MLflow: seconds
def test_mlflow_store_creation_says_nothing_after_logs_setup(tmp_path):
    """MLflow logs INFO lines as it creates a store's tables; a user sees none of them,
    while rnnsweep's own warnings keep one plain form."""
    code = "\n".join([
        "import logging, sys",
        "from rnnsweep import logs",
        "logs.setup()",
        "from mlflow.tracking import MlflowClient",
        f"MlflowClient('sqlite:///{tmp_path}/mlflow.db').search_experiments()",
        "logging.getLogger('rnnsweep.sweep.x').warning('kept')",
        "logging.getLogger('rnnsweep.sweep.x').info('hidden')",
    ])
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == ["rnnsweep: warning: kept"]
    assert done.stdout == ""


@pytest.mark.slow
def test_a_sweep_on_the_embedded_ray_writes_nothing_to_stderr(mlflow_store, tmp_path):
    """No token-authentication banner, no MLflow INFO lines, no font-cache line: a
    successful sweep leaves stderr empty but for rnnsweep's own warnings (on a busy
    machine, that its timings are noisy)."""
    result = run_cli(["-m", *toy("batch=1,2", "workload=train", "hardware.num_cpus=1"),
                      *cli_paths(mlflow_store, tmp_path)], tmp_path,
                     extra_env={"MPLCONFIGDIR": str(tmp_path / "fresh-matplotlib-cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    foreign = [line for line in result.stderr.splitlines()
               if not line.startswith("rnnsweep: warning: ")]
    assert foreign == [], result.stderr
    for chatter in ("Token authentication", "INFO mlflow", "font", "[HYDRA]"):
        assert chatter not in result.stdout, chatter

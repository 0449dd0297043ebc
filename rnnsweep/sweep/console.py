"""The sweep on the terminal: what a person watching it needs, and nothing else.

On a TTY, one live progress display (rich): done, running, pending and failed trials,
the elapsed time, an estimate of the time left, and the latest result. In a log (stdout
not a TTY), one plain line per finished trial. Either way, one table at the end with a
row per trial: its swept keys, its outcome and the sweep's headline metrics. Failures
and noisy timings get a line of their own as they happen, on both.

A sink (``rnnsweep.sweep.sink.SweepSink``): the launcher tells it what happened and it
never raises back. What a trial *is* comes from its swept keys; what a sweep *measures*
comes from those keys and the metrics its records carry (see ``headline``).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from rnnsweep.contract import FAILED, KILLED, NOISE_REASON_TAG, NOISY_TAG, OK, TrialState, from_tag
from rnnsweep.record import TrialRecord
from rnnsweep.sweep.naming import swept_keys
from rnnsweep.sweep.sink import TrialInfo
from rnnsweep.text import number, shorten

LOG_PROGRESS_S = 30.0  # in a log, a running trial's step line at most this often
SHOWN_RUNNING = 8  # running trials with a line of their own on the live display
LOG_WIDTH = 240  # a log has no terminal width: lines and the table are never wrapped


@dataclass(frozen=True)
class Metric:
    key: str
    label: str


# What each kind of sweep is about, most specific first. A sweep's kind follows from
# what it varies (clipping, precision) or from what its trials measured.
FUSED = (Metric("latency_ms_fused", "fused ms"), Metric("latency_ms_loop", "loop ms"),
         Metric("fused_speedup", "speedup"), Metric("impl_max_abs_diff", "parity"))
STREAMING = (Metric("stream_latency_ms_p50", "p50 ms"), Metric("stream_latency_ms_p99", "p99 ms"),
             Metric("stream_max_abs_diff", "parity"),
             Metric("export_max_abs_diff", "export parity"))
CLIPPING = (Metric("max_grad_norm", "max grad norm"),
            Metric("max_grad_norm_clipped", "clipped"), Metric("nonfinite_steps", "nonfinite"),
            Metric("final_loss", "loss"))
PRECISION = (Metric("step_time_ms", "step ms"), Metric("train_seq_per_s", "seq/s"),
             Metric("final_loss", "loss"), Metric("peak_mem_mb", "peak MB"))
LATENCY = (Metric("latency_ms", "ms/batch"), Metric("latency_ms_per_seq", "ms/seq"),
           Metric("throughput_seq_per_s", "seq/s"))
TRAINING = (Metric("step_time_ms", "step ms"), Metric("final_loss", "loss"))


def headline(metrics: dict[str, float], swept: set[str]) -> tuple[Metric, ...]:
    """The metrics that answer the question this sweep asks."""
    if "fused_speedup" in metrics:
        return FUSED
    if "stream_latency_ms_p50" in metrics:
        return STREAMING
    if any(key == "clipping" or key.startswith("clipping.") for key in swept):
        return CLIPPING
    if any(key == "precision" or key.startswith("precision.") for key in swept):
        return PRECISION
    if "latency_ms" in metrics:
        return LATENCY
    if "step_time_ms" in metrics:
        return TRAINING
    return ()


_SHOWN = {m.key for kind in (FUSED, STREAMING, CLIPPING, PRECISION, LATENCY, TRAINING)
          for m in kind}


def _shown(key: str) -> bool:
    """Whether a metric can be among a trial's headline values (see ``headline``)."""
    return key in _SHOWN or (key.startswith("export_") and key.endswith("_max_abs_diff"))


def headline_values(metrics: dict[str, float], swept: set[str]) -> dict[str, float]:
    """label -> value for the headline metrics a trial has."""
    metrics = dict(metrics)
    exports = [v for k, v in metrics.items() if k.startswith("export_") and
               k.endswith("_max_abs_diff")]
    if exports:  # the worst exported format is the one that answers "does export match?"
        metrics["export_max_abs_diff"] = max(exports)
    return {m.label: metrics[m.key] for m in headline(metrics, swept) if m.key in metrics}


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# A killed trial is "cancelled" on the terminal: the sweep ended it, not the trial itself.
_SHOWN_AS = {TrialState.KILLED: "cancelled"}


@dataclass
class _Trial:
    info: TrialInfo
    state: TrialState = TrialState.PENDING
    # What is shown of its record, and no more: a sweep of thousands of trials keeps
    # neither their step series nor their artifacts alive in the driver.
    outcome: str = ""
    reason: str = ""
    noisy: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""  # reused run id, or why it was cancelled
    values: dict[str, float] = field(default_factory=dict)
    # While it trains: its step of steps, latest loss and the time per step lately.
    step: int = 0
    steps: int | None = None
    loss: float | None = None
    step_s: float | None = None

    def progress(self) -> str:
        if self.steps is None:
            return ""
        text = f"step {self.step}/{self.steps}"
        if self.loss is not None:
            text += f"  loss {number(self.loss)}"
        if self.step_s is not None and self.steps > self.step:
            text += f"  ETA {_clock((self.steps - self.step) * self.step_s)}"
        return text

    @property
    def fraction(self) -> float:
        return min(self.step / self.steps, 1.0) if self.steps else 0.0


class ConsoleSink:
    """Shows a sweep on ``console`` (default: stdout, live display if it is a TTY)."""

    def __init__(self, console: Console | None = None, title: str = "") -> None:
        self.console = console or Console()
        self.on_tty = self.console.is_terminal
        if not self.on_tty:
            self.console.width = max(self.console.width, LOG_WIDTH)
            self.console.soft_wrap = True
        self.title = title
        self.trials: dict[int, _Trial] = {}
        self.swept: set[str] = set()
        self._progress: _SweepProgress | None = None
        self._task: TaskID | None = None
        self._last = ""
        self._logged: dict[int, float] = {}  # trial -> when its step line was last logged

    # --- the sink protocol -------------------------------------------------------------

    def submitted(self, trials: Sequence[TrialInfo]) -> None:
        for info in trials:
            if not info.overrides and info.name != "trial":
                # A trial recorded where it ran (Hydra's basic launcher) comes with its
                # name only, which is its overrides joined.
                info = replace(info, overrides=tuple(info.name.split(",")))
            # Its name and overrides are what is shown; its params are the store's.
            info = replace(info, params={}, tags={})
            self.trials.setdefault(info.idx, _Trial(info))
        self.swept = swept_keys([t.info.overrides for t in self.trials.values()])
        self._refresh()

    def started(self, idx: int, info: dict | None = None) -> None:
        trial = self._trial(idx)
        if trial.state == TrialState.PENDING:
            trial.state = TrialState.RUNNING
        attempt = int((info or {}).get("attempt", 0))
        if attempt:
            self._say(f"  #{idx} {trial.info.name}: its worker died; attempt {attempt + 1} "
                      "started (from its last checkpoint, if it saves them)", style="yellow")
        self._refresh()

    def live(self, idx: int, rows: list, total_steps: int | None = None) -> None:
        trial = self._trial(idx)
        step, values = rows[-1]
        times = [v["step_ms"] for _, v in rows if "step_ms" in v]
        trial.step, trial.steps = step + 1, total_steps
        trial.loss = next((v["loss"] for _, v in reversed(rows) if "loss" in v), trial.loss)
        if times:
            trial.step_s = statistics.median(times) / 1e3
        if not self.on_tty:
            now = time.monotonic()
            if now - self._logged.get(idx, -math.inf) >= LOG_PROGRESS_S:
                self._logged[idx] = now
                self._say(f"  #{idx} [running] {trial.info.name}: {trial.progress()}")
        self._refresh()

    def reused(self, idx: int, run_id: str, info: TrialInfo | None = None) -> None:
        if info is not None and idx not in self.trials:  # reused trials are never submitted
            self.submitted([info])
        trial = self._trial(idx)
        trial.state, trial.note = TrialState.REUSED, run_id
        self._say(f"  #{idx} [reused] {trial.info.name}: an identical trial finished as "
                  f"run {run_id}")
        self._refresh()

    def finished(self, idx: int, record: TrialRecord) -> None:
        trial = self._trial(idx)
        trial.state = TrialState.FAILED if record.outcome == FAILED else TrialState.DONE
        trial.outcome, trial.reason = record.outcome, record.reason
        trial.noisy = from_tag(record.tags.get(NOISY_TAG), bool, False)
        # Interned: each record brings its own copy of every metric's name.
        trial.metrics = {sys.intern(k): v for k, v in record.metrics.items() if _shown(k)}
        trial.values = headline_values(trial.metrics, self.swept)
        line = self._result_line(idx, trial)
        self._last = line.strip()
        if not self.on_tty:
            self._say(f"{line}  ({self._counts_text()})")
        elif record.outcome != OK:  # on a TTY only what needs a look leaves the display
            self._say(line, style="yellow")
        if trial.noisy:
            why = record.tags.get(NOISE_REASON_TAG) or "spread or load beyond the threshold"
            self._say(f"  #{idx} warning: {trial.info.name}: timing is noisy ({why}); "
                      "repeat it before trusting the figure", style="yellow")
        self._refresh()

    def cancelled(self, idx: int, reason: str, outcome: str = KILLED) -> None:
        trial = self._trial(idx)
        if trial.state in (TrialState.PENDING, TrialState.RUNNING):
            trial.state, trial.note = TrialState.KILLED, reason
            trial.outcome = outcome if outcome != KILLED else ""
        self._refresh()

    def ended(self) -> None:
        """The sweep is over: the live display makes way for the closing table."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if len(self.trials) > 1:  # a single run's one line says it all
            for trial in self.trials.values():  # what varies is known for sure only now
                if trial.outcome:
                    trial.values = headline_values(trial.metrics, self.swept)
            self.console.print(self.table())

    # --- what is shown -----------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Trials per state, by the word the terminal shows for it."""
        states = [t.state for t in self.trials.values()]
        return {_SHOWN_AS.get(s, s.value): states.count(s) for s in TrialState}

    def table(self) -> Table:
        keys = self._name_keys()
        labels: list[str] = []
        for trial in self.trials.values():
            labels += [label for label in trial.values if label not in labels]
        table = Table(title=f"rnnsweep: trials{f' of {self.title}' if self.title else ''}",
                      box=box.SIMPLE_HEAD if self.on_tty else box.ASCII2, title_justify="left")
        table.add_column("#", justify="right")
        for key in keys or ["trial"]:  # no overrides to split: the trial's name
            table.add_column(key)
        table.add_column("outcome")
        for label in labels:
            table.add_column(label, justify="right")
        notes = {idx: self._note(t) for idx, t in self.trials.items()}
        if any(notes.values()):
            table.add_column("note")
        for idx in sorted(self.trials):
            trial = self.trials[idx]
            named = dict(o.partition("=")[::2] for o in trial.info.overrides)
            columns = [named.get(k, "") for k in keys] if keys else [trial.info.name]
            row = [str(idx), *columns, self._outcome(trial)]
            row += [number(trial.values[label]) if label in trial.values else ""
                    for label in labels]
            table.add_row(*row, *([notes[idx]] if any(notes.values()) else []))
        return table

    # --- inside --------------------------------------------------------------------------

    def _trial(self, idx: int) -> _Trial:
        if idx not in self.trials:  # an event for a trial this sink was never told of
            self.trials[idx] = _Trial(TrialInfo(idx, f"trial {idx}"))
        return self.trials[idx]

    def _name_keys(self) -> list[str]:
        keys: list[str] = []
        for trial in self.trials.values():
            keys += [o.partition("=")[0] for o in trial.info.overrides
                     if o.partition("=")[0] in self.swept and o.partition("=")[0] not in keys]
        return keys

    def _result_line(self, idx: int, trial: _Trial) -> str:
        parts = [f"  #{idx} [{trial.outcome or trial.state}] {trial.info.name}"]
        parts += [f"{label} {number(v)}" for label, v in trial.values.items()]
        if trial.reason:
            parts.append(f"({shorten(trial.reason)})")
        return "  ".join(parts)

    def _outcome(self, trial: _Trial) -> str:
        if trial.outcome:
            return trial.outcome + (" (noisy)" if trial.noisy else "")
        return KILLED if trial.state == TrialState.KILLED else trial.state.value

    def _note(self, trial: _Trial) -> str:
        if trial.reason:
            return shorten(trial.reason, 60)
        if trial.state == TrialState.REUSED:
            return f"run {trial.note}"
        return shorten(trial.note, 60)

    def _counts_text(self) -> str:
        c = self.counts()
        text = f"{c['done'] + c['failed']}/{len(self.trials)} done"
        extra = [f"{c[s]} {s}" for s in ("running", "failed", "reused", "cancelled") if c[s]]
        return ", ".join([text, *extra])

    def _say(self, line: str, style: str | None = None) -> None:
        if self.on_tty:
            self.console.print(Text(line, style=style or ""))
        else:
            self.console.print(line, markup=False, highlight=False, crop=False)

    def _refresh(self) -> None:
        if not self.on_tty:
            return
        if self._progress is None or self._task is None:
            self._progress = _SweepProgress(
                SpinnerColumn(), TextColumn("[bold]rnnsweep"), BarColumn(bar_width=24),
                MofNCompleteColumn(), TextColumn("{task.fields[states]}"), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
            self._task = self._progress.add_task("sweep", total=None, states="")
        c = self.counts()
        states = (f"{c['running']} running · {c['pending']} pending · {c['failed']} failed"
                  + (f" · {c['reused']} reused" if c["reused"] else "")
                  + (f" · {c['cancelled']} killed" if c["cancelled"] else ""))
        # Running trials count by the share of their steps done: the sweep's ETA moves
        # while its first trials train.
        partial = sum(t.fraction for t in self.trials.values() if t.state == TrialState.RUNNING)
        self._progress.update(self._task, total=len(self.trials),
                              completed=len(self.trials) - c["running"] - c["pending"] + partial,
                              states=states)
        self._progress.last = self._last
        self._progress.running = [
            f"#{idx} {t.info.name}: {t.progress()}" for idx, t in self.trials.items()
            if t.state == TrialState.RUNNING and t.steps is not None][:SHOWN_RUNNING]
        if not self._progress.live.is_started:
            self._progress.start()
        self._progress.refresh()  # each event is drawn now, not at the next 10 Hz tick


class _SweepProgress(Progress):
    """Rich's progress bar, a line for each running trial's step, loss and ETA, and the
    latest result on a line of its own beneath them."""

    last = ""
    running: list[str] = []  # replaced whole at each refresh

    def get_renderables(self):
        yield from super().get_renderables()
        for line in self.running:
            yield Text(f"  {line}", overflow="ellipsis", no_wrap=True)
        if self.last:
            yield Text(f"latest: {self.last}", style="dim", overflow="ellipsis", no_wrap=True)

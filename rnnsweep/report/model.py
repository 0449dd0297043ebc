"""The report's data: trials as read from MLflow, findings, and the report itself. Plain
data: rendering is ``render``'s, writing files ``build``'s and ``cli``'s."""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnsweep.contract import (
    NOISE_REASON_TAG,
    NOISY_TAG,
    OK,
    RAY_EXCLUSIVE_TAG,
    RAY_TRIALS_BESIDE_TAG,
    STREAM_PARITY_TAG,
    TIMED_METRICS,
    export_status_tag,
    from_tag,
)

# Deployment parity: the tags that say whether each path matched eager PyTorch.
PARITY_TAGS = {"streaming": STREAM_PARITY_TAG,
               **{fmt: export_status_tag(fmt)
                  for fmt in ("torchscript", "torchscript_optimized", "onnx")}}


@dataclass
class Trial:
    run_id: str
    outcome: str  # OK / UNSUPPORTED / FAILED / DIVERGED, or the run status without a trial outcome
    reason: str
    params: dict[str, str]
    metrics: dict[str, float]
    device: str  # "" when the trial failed before it saw its device
    tags: dict[str, str] = field(default_factory=dict)
    reused: bool = False  # measured by an earlier sweep and reused by this one (resume)
    experiment_id: str = ""
    status: str = ""  # the run's MLflow status: FINISHED, FAILED, KILLED, RUNNING

    @property
    def name(self) -> str:
        return self.tags.get("mlflow.runName") or self.run_id

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def timed(self) -> bool:
        return any(m in self.metrics for m in TIMED_METRICS)

    @property
    def noise_reason(self) -> str:
        """Why this trial's timings are not to be trusted; ``""`` when nothing says so. The
        trial's own verdict, plus the launcher's placement: a timed trial that ran beside
        others on a device it did not hold alone."""
        reasons = []
        if from_tag(self.tags.get(NOISY_TAG), bool, False):
            reasons.append(self.tags.get(NOISE_REASON_TAG, "noisy"))
        beside = from_tag(self.tags.get(RAY_TRIALS_BESIDE_TAG), int, 0)
        if (self.timed and beside > 0
                and not from_tag(self.tags.get(RAY_EXCLUSIVE_TAG), bool, False)):
            reasons.append(f"ran beside {beside} other trial{'s' if beside != 1 else ''} "
                           "on a shared device")
        return "; ".join(reasons)

    @property
    def noisy(self) -> bool:
        return bool(self.noise_reason)

    @property
    def parity_checked(self) -> bool:
        return any(tag in self.tags for tag in PARITY_TAGS.values())

    @property
    def parity_failures(self) -> list[str]:
        """The deployment paths whose parity check with eager PyTorch failed."""
        return [path for path, tag in PARITY_TAGS.items()
                if tag in self.tags and self.tags[tag] != "ok"]


@dataclass
class Finding:
    what: str
    value: float
    unit: str  # "x" for a speedup, "ms/timestep" for a slope
    detail: str = ""  # e.g. a fit's R² and standard error, or a verdict


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
    notes: list[str] = field(default_factory=list)  # noisy, unsupported, failed trials
    experiment_id: str = ""
    # The rendered pages, filled in once the report is built (rnnsweep.report.build).
    markdown: str = ""
    html: str = ""  # one self-contained page (plots inlined) for MLflow's artifact viewer

    @property
    def title(self) -> str:
        """The sweep's name; a command-line sweep (named just "sweep") by its axes."""
        if self.sweep == "sweep" and self.axes:
            return f"sweep over {', '.join(self.axes)}"
        return self.sweep

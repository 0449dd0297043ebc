"""The deploy workload of a trial: streaming inference, then export for serving.

Plain arguments in, plain data out: the caller turns the result into MLflow metrics, tags
and artifacts, so this module knows nothing of Hydra or MLflow.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import torch

from rnnsweep.contract import STREAM_PARITY_TAG
from rnnsweep.deploy.export import export_and_verify
from rnnsweep.deploy.model import RecurrentModel
from rnnsweep.deploy.streaming import measure_streaming


@dataclass
class DeploymentResult:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    files: list[pathlib.Path] = field(default_factory=list)
    # The samples behind a timed metric, by metric: ``stream_latency_ms_p50`` -> every
    # timed chunk's latency.
    samples_ms: dict[str, list[float]] = field(default_factory=dict)


def run_deployment(
    model: RecurrentModel,
    *,
    input_size: int,
    batch: int,
    seq_len: int,
    chunk_len: int,
    out_dir: pathlib.Path,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 20,
    export: bool = True,
) -> DeploymentResult:
    """Stream a random ``(batch, seq_len)`` sequence through ``model`` in ``chunk_len`` chunks
    on ``device``, then (with ``export``) export it under ``out_dir`` and verify each format.

    Metrics: ``stream_max_abs_diff``, ``stream_latency_ms_p50``, ``stream_latency_ms_p99``,
    ``stream_chunks_per_s`` and, per format, ``export_<fmt>_max_abs_diff`` and
    ``export_<fmt>_latency_ms`` next to ``export_eager_latency_ms`` (exports and that eager
    baseline run on CPU). Tags: ``rnnsweep.stream.parity`` and
    ``rnnsweep.export.<fmt>.status``/``.error``. A failed export is reported in the tags and
    its latency left out of the metrics; it is never raised.
    """
    model.to(device).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, seq_len, input_size, generator=generator).to(device)
    stream = measure_streaming(model, x, chunk_len=chunk_len, warmup=warmup, repeats=repeats)
    result = DeploymentResult(
        metrics=dict(stream.metrics),
        tags={STREAM_PARITY_TAG: "ok" if stream.parity_ok else "failed"},
        samples_ms={"stream_latency_ms_p50": stream.latencies_ms},
    )
    if export:
        report = export_and_verify(
            model, batch=batch, seq_len=seq_len, out_dir=out_dir, warmup=warmup, repeats=repeats
        )
        result.metrics |= report.metrics
        result.tags |= report.tags
        result.files = report.files
    return result

"""Streaming sessions: chunked outputs equal one full forward pass, for every backend."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rnnsweep.deploy.export import export_torchscript
from rnnsweep.deploy.streaming import (
    ExportedModelError,
    StreamingSession,
    measure_streaming,
    open_exported,
)
from rnnsweep.trial.models import RecurrentNet

CELLS = ("lstm", "gru", "rnn")
INPUT, HIDDEN, LAYERS = 3, 8, 2


def make_model(cell: str, seed: int = 0, impl: str = "fused") -> RecurrentNet:
    torch.manual_seed(seed)
    return RecurrentNet(cell, INPUT, HIDDEN, num_layers=LAYERS, impl=impl).eval()


def gru_example() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 3, INPUT), torch.zeros(LAYERS, 2, HIDDEN)


def stream(session: StreamingSession, x: torch.Tensor, chunk_len: int) -> torch.Tensor:
    return torch.cat([session.step(chunk) for chunk in x.split(chunk_len, dim=1)], dim=1)


def full_forward(model: RecurrentNet, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)[0]


@pytest.mark.parametrize("impl", ["fused", "loop"])
@pytest.mark.parametrize("cell", CELLS)
def test_eager_stream_equals_full_forward_across_reset(cell: str, impl: str) -> None:
    model = make_model(cell, impl=impl)
    session = StreamingSession.from_model(model)
    first, second = torch.randn(2, 23, INPUT), torch.randn(4, 17, INPUT)

    # 23 = 4 chunks of 5 and a ragged chunk of 3.
    streamed = stream(session, first, chunk_len=5)
    assert (streamed - full_forward(model, first)).abs().max().item() < 1e-5

    # A new sequence (even of another batch size) must not see the old state.
    session.reset()
    streamed = stream(session, second, chunk_len=4)
    assert (streamed - full_forward(model, second)).abs().max().item() < 1e-5


def test_state_is_carried_not_restarted() -> None:
    # Guards the test above against a session that ignores state: restarting from zeros at
    # every chunk must give a visibly different answer for this model.
    model = make_model("gru")
    x = torch.randn(2, 12, INPUT)
    session = StreamingSession.from_model(model)
    restarted = []
    for chunk in x.split(4, dim=1):
        session.reset()
        restarted.append(session.step(chunk))
    assert (torch.cat(restarted, dim=1) - full_forward(model, x)).abs().max().item() > 1e-3


def test_batch_change_without_reset_is_refused() -> None:
    session = StreamingSession.from_model(make_model("lstm"))
    session.step(torch.randn(2, 4, INPUT))
    with pytest.raises(ValueError, match="reset"):
        session.step(torch.randn(3, 4, INPUT))


@pytest.mark.parametrize("cell", CELLS)
def test_measure_streaming_metrics(cell: str) -> None:
    model = make_model(cell)
    report = measure_streaming(model, torch.randn(2, 30, INPUT), chunk_len=7, warmup=1, repeats=3)
    assert report.parity_ok
    assert report.metrics["stream_max_abs_diff"] < 1e-5
    assert 0 < report.metrics["stream_latency_ms_p50"] <= report.metrics["stream_latency_ms_p99"]
    assert report.metrics["stream_chunks_per_s"] > 0
    assert all(math.isfinite(v) for v in report.metrics.values())
    # Every timed chunk (5 per pass of 30 steps in chunks of 7, 3 passes): the samples
    # the percentiles describe, which rnnsweep.compare bootstraps its interval from.
    assert len(report.latencies_ms) == 5 * 3
    assert report.metrics["stream_latency_ms_p50"] == pytest.approx(
        statistics.median(report.latencies_ms))


def test_measure_streaming_flags_a_mismatch() -> None:
    # A session over different weights is a real mismatch: it must be flagged, not hidden.
    model, other = make_model("rnn", seed=0), make_model("rnn", seed=1)
    report = measure_streaming(
        model, torch.randn(2, 10, INPUT), chunk_len=5, warmup=0, repeats=1,
        session=StreamingSession.from_model(other),
    )
    assert not report.parity_ok
    assert report.metrics["stream_max_abs_diff"] > 1e-3


@pytest.mark.parametrize("name", ["m.pt", "m.onnx"])
def test_missing_file_is_a_clear_error(tmp_path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ExportedModelError, match="no such file") as info:
        open_exported(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["m.pt", "m.onnx"])
def test_corrupted_file_is_a_clear_error(tmp_path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00not a model\xff" * 64)
    with pytest.raises(ExportedModelError, match="not a readable") as info:
        open_exported(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_truncated_export_is_a_clear_error(tmp_path) -> None:
    # A copy cut short in transfer: the start of a real file, not random bytes.
    good = export_torchscript(make_model("gru"), gru_example(), tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ExportedModelError, match="cut.pt"):
        open_exported(cut)


def test_file_without_rnnsweep_metadata_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ExportedModelError, match="metadata") as info:
        open_exported(path)
    assert str(path) in str(info.value)


def test_unknown_suffix_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"")
    with pytest.raises(ExportedModelError, match="unknown suffix"):
        open_exported(path)

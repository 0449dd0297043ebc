"""Exports match eager PyTorch at new shapes; failures come back as data, never raised."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from rnnsweep.deploy.export import FORMATS, export_and_verify, export_onnx
from rnnsweep.deploy.run import run_deployment
from rnnsweep.deploy.streaming import StreamingSession, measure_streaming, open_exported
from rnnsweep.trial.models import RecurrentNet

CELLS = ("lstm", "gru", "rnn")
INPUT, HIDDEN, LAYERS = 3, 8, 2
STREAM_KEYS = (
    "stream_max_abs_diff",
    "stream_latency_ms_p50",
    "stream_latency_ms_p99",
    "stream_chunks_per_s",
)
EXPORT_KEYS = ("export_eager_latency_ms",) + tuple(
    f"export_{fmt}_{what}" for fmt in FORMATS for what in ("max_abs_diff", "latency_ms")
)


def make_model(cell: str, impl: str = "fused") -> RecurrentNet:
    torch.manual_seed(0)
    return RecurrentNet(cell, INPUT, HIDDEN, num_layers=LAYERS, impl=impl).eval()


# ONNX exports take seconds each: every test that makes one is in the slow tier.
@pytest.fixture(scope="module", params=CELLS)
def exported(request, tmp_path_factory):
    """Each cell exported once in every format (ONNX export takes seconds)."""
    model = make_model(request.param)
    out_dir = tmp_path_factory.mktemp(request.param)
    report = export_and_verify(model, batch=3, seq_len=11, out_dir=out_dir, warmup=1, repeats=2)
    return model, report


@pytest.mark.slow
def test_every_format_verifies(exported) -> None:
    _, report = exported
    for fmt in FORMATS:
        assert report.tags[f"rnnsweep.export.{fmt}.status"] == "ok", report.tags
        assert report.metrics[f"export_{fmt}_max_abs_diff"] < 1e-5
        assert report.metrics[f"export_{fmt}_latency_ms"] > 0
    assert report.metrics["export_eager_latency_ms"] > 0
    assert [p.name for p in report.files] == [
        "model.torchscript.pt", "model.torchscript_optimized.pt", "model.onnx"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("batch, seq_len", [(4, 9), (1, 2)])
def test_exported_files_match_eager_at_new_shapes(exported, batch: int, seq_len: int) -> None:
    # Independent of export_and_verify's own check: fresh shapes (the exports were traced at
    # batch 2, seq 3 and verified at 3, 11) and a random non-zero initial state.
    model, report = exported
    eager = StreamingSession.from_model(model)
    x = torch.randn(batch, seq_len, INPUT)
    state = tuple(torch.randn(LAYERS, batch, HIDDEN) for _ in range(eager.spec.state_count))
    y_want, state_want = eager.forward(x, state)
    for path in report.files:
        y, new_state = open_exported(path).forward(x, state)
        assert y.shape == y_want.shape, path.name
        assert (y - y_want).abs().max().item() < 1e-5, path.name
        for got, want in zip(new_state, state_want, strict=True):
            assert (got - want).abs().max().item() < 1e-5, path.name


@pytest.mark.slow
def test_exported_files_stream_like_eager(exported) -> None:
    # The serving path: chunks through each file, carrying state, against one eager pass.
    model, report = exported
    x = torch.randn(2, 20, INPUT)
    for path in report.files:
        stream = measure_streaming(
            model, x, chunk_len=6, warmup=1, repeats=2, session=open_exported(path)
        )
        assert stream.parity_ok, path.name
        assert stream.metrics["stream_max_abs_diff"] < 1e-5, path.name


@pytest.mark.slow
def test_onnx_export_with_one_tensor_as_h0_and_c0(tmp_path) -> None:
    # A natural call, (x, zeros, zeros), once exported c0 in place of h0: h0 must matter.
    model = make_model("lstm")
    zeros = torch.zeros(LAYERS, 2, HIDDEN)
    export_onnx(model, (torch.randn(2, 3, INPUT), zeros, zeros), tmp_path / "m.onnx")
    session, eager = open_exported(tmp_path / "m.onnx"), StreamingSession.from_model(model)
    x = torch.randn(3, 5, INPUT)
    state = (torch.randn(LAYERS, 3, HIDDEN), torch.zeros(LAYERS, 3, HIDDEN))
    assert (session.forward(x, state)[0] - eager.forward(x, state)[0]).abs().max().item() < 1e-5


def test_loop_impl_trace_is_reported_as_failed(tmp_path) -> None:
    # A real failure: tracing the Python loop over time bakes in the example length.
    model = make_model("gru", impl="loop")
    report = export_and_verify(
        model, batch=3, seq_len=7, out_dir=tmp_path, warmup=0, repeats=1,
        formats=("torchscript",),
    )
    assert report.tags["rnnsweep.export.torchscript.status"] == "failed"
    assert "baked in" in report.tags["rnnsweep.export.torchscript.error"]
    assert "export_torchscript_latency_ms" not in report.metrics
    assert report.files == [tmp_path / "model.torchscript.pt"]  # kept for inspection


def test_unwritable_out_dir_is_reported_not_raised(tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the export directory should be")
    report = export_and_verify(
        make_model("rnn"), batch=2, seq_len=4, out_dir=blocker / "exports", warmup=0, repeats=1,
        formats=("torchscript", "torchscript_optimized"),
    )
    for fmt in ("torchscript", "torchscript_optimized"):
        assert report.tags[f"rnnsweep.export.{fmt}.status"] == "failed"
        assert "NotADirectoryError" in report.tags[f"rnnsweep.export.{fmt}.error"]
    assert report.files == []


def test_missing_onnx_runtime_is_reported_with_install_hint(tmp_path, monkeypatch) -> None:
    # None in sys.modules makes `import onnxruntime` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    report = export_and_verify(
        make_model("lstm"), batch=2, seq_len=4, out_dir=tmp_path, warmup=0, repeats=1,
        formats=("onnx",),
    )
    assert report.tags["rnnsweep.export.onnx.status"] == "failed"
    assert "install the 'export' extra" in report.tags["rnnsweep.export.onnx.error"]
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_run_deployment_reports_every_metric(tmp_path) -> None:
    model = make_model("rnn")
    model.train()  # run_deployment must switch to eval itself
    result = run_deployment(
        model, input_size=INPUT, batch=2, seq_len=20, chunk_len=6, out_dir=tmp_path,
        device=torch.device("cpu"), warmup=1, repeats=3,
    )
    assert not model.training
    assert set(STREAM_KEYS + EXPORT_KEYS) <= set(result.metrics)
    assert all(math.isfinite(value) for value in result.metrics.values()), result.metrics
    assert result.metrics["stream_max_abs_diff"] < 1e-5
    assert result.tags["rnnsweep.stream.parity"] == "ok"
    assert all(result.tags[f"rnnsweep.export.{fmt}.status"] == "ok" for fmt in FORMATS)
    assert len(result.files) == len(FORMATS)
    assert all(path.is_file() and path.parent == tmp_path for path in result.files)


def test_run_deployment_without_export(tmp_path) -> None:
    result = run_deployment(
        make_model("lstm"), input_size=INPUT, batch=2, seq_len=12, chunk_len=5,
        out_dir=tmp_path, device=torch.device("cpu"), warmup=0, repeats=2, export=False,
    )
    assert set(result.metrics) == set(STREAM_KEYS)
    assert result.files == [] and not any(tmp_path.iterdir())

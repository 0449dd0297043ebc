"""Export a recurrent model for serving and check each export against eager PyTorch.

Formats (``FORMATS``):

* ``torchscript``: ``torch.jit.trace`` of the stateful wrapper, saved with ``torch.jit.save``.
* ``torchscript_optimized``: the same trace through ``torch.jit.freeze`` and
  ``torch.jit.optimize_for_inference`` (eval mode only; the fusions may move numerics by a
  few ulps). TorchScript is deprecated upstream and every ``torch.jit`` call warns; it is
  kept because users still deploy it, and those warnings are silenced here.
* ``onnx``: torch's default (``dynamo=True``) exporter with dynamic batch and sequence axes.
  On torch 2.13 it keeps both axes for nn.LSTM and nn.GRU, but for nn.RNN (and any Python
  loop over time) it silently specialises the sequence axis to the example length. That is
  detected from the exported graph's inputs, and the model is then exported again with the
  legacy TorchScript-based exporter (``dynamo=False``), which maps nn.RNN to ONNX RNN; the
  tag ``rnnsweep.export.onnx.exporter`` says which exporter wrote the file.

Every export is loaded back from its file and run at a batch size and sequence length
different from the ones it was exported with. A trace of ``impl="loop"`` unrolls the loop
and bakes in the export-time length, so it fails that check with a shape mismatch: it is
reported as a failed export rather than swapped for the fused model, because the file on
disk would not serve other lengths. Failures are returned as data, never raised.
"""

from __future__ import annotations

import copy
import functools
import importlib
import pathlib
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from rnnsweep.contract import EXPORT_TAG_PREFIX, export_status_tag
from rnnsweep.deploy.model import RecurrentModel
from rnnsweep.deploy.streaming import (
    INSTALL_HINT,
    METADATA_KEY,
    ModelSpec,
    StreamingSession,
    Tensors,
    error_summary,
    open_exported,
)

FORMATS = ("torchscript", "torchscript_optimized", "onnx")
FILENAMES = {
    "torchscript": "model.torchscript.pt",
    "torchscript_optimized": "model.torchscript_optimized.pt",
    "onnx": "model.onnx",
}
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")


class StatefulRNN(nn.Module):
    """GRU/RNN with an export-friendly signature: ``(x, h0) -> (y, h_n)``."""

    def __init__(self, model: RecurrentModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, _, h_n = self.model(x, h0)
        return y, h_n


class StatefulLSTM(nn.Module):
    """LSTM with an export-friendly signature: ``(x, h0, c0) -> (y, h_n, c_n)``."""

    def __init__(self, model: RecurrentModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, _, (h_n, c_n) = self.model(x, (h0, c0))
        return y, h_n, c_n


def stateful_module(model: RecurrentModel) -> nn.Module:
    wrapper = StatefulLSTM(model) if model.cell == "lstm" else StatefulRNN(model)
    return wrapper.eval()


@dataclass
class ExportReport:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    files: list[pathlib.Path] = field(default_factory=list)


def export_torchscript(
    model: RecurrentModel, example: Tensors, path: pathlib.Path, *, optimize: bool = False
) -> pathlib.Path:
    """Trace ``model`` with ``example`` = (x, *state) and save it, optionally frozen+optimised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # nn.RNNBase's shape checks trip TracerWarnings on every trace; whether the trace
        # generalises is decided by the parity check at new shapes instead.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # check_trace re-traces to compare graphs; the parity check is stricter and runs anyway.
        module = torch.jit.trace(stateful_module(model), _distinct(example), check_trace=False)
        if optimize:
            module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
        metadata = {METADATA_KEY: ModelSpec.of(model).to_json()}
        torch.jit.save(module, str(path), _extra_files=metadata)
    return path


def export_onnx(model: RecurrentModel, example: Tensors, path: pathlib.Path) -> str:
    """Export to ONNX with dynamic batch and sequence axes; returns the exporter used."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec.of(model)
    wrapper = stateful_module(model)
    input_names, output_names = spec.input_names(), spec.output_names()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic_shapes = ({0: batch, 1: seq}, *({1: batch},) * spec.state_count)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        # The legacy exporter traces, tripping the same benign TracerWarnings as above.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Known-benign exporter chatter: nn.RNNBase re-assigns its flat weights in forward,
        # x and the states share the batch symbol on purpose, and the legacy exporter's
        # RNN batch-size advice is about initial states that are already inputs here.
        for message in (
            "The tensor attributes .* were assigned during export",
            "# The axis name: batch will not be used",
            "Exporting a model to ONNX with a batch_size other than 1",
        ):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        example = _distinct(example)
        program = torch.onnx.export(
            wrapper, example, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
            input_names=input_names, output_names=output_names,
        )
        if program is None:  # only the legacy exporter returns nothing
            raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
        proto = program.model_proto
        exporter = "dynamo"
        fixed = _static_axes(proto)
        if fixed:
            axes = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
            axes |= {n: {1: "batch"} for n in input_names[1:] + output_names[1:]}
            torch.onnx.export(
                wrapper, example, str(path), dynamo=False, dynamic_axes=axes,
                input_names=input_names, output_names=output_names,
            )
            proto = onnx.load(str(path))
            exporter = f"torchscript (the dynamo exporter fixed {', '.join(fixed)})"
    _declare_dynamic_output(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    onnx.save(proto, str(path))
    return exporter


class ParityError(AssertionError):
    """An export's outputs differ from eager PyTorch's."""

    def __init__(self, message: str, max_abs_diff: float | None = None) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


def export_and_verify(
    model: RecurrentModel,
    *,
    batch: int,
    seq_len: int,
    out_dir: pathlib.Path,
    warmup: int = 3,
    repeats: int = 20,
    formats: tuple[str, ...] = FORMATS,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> ExportReport:
    """Export ``model`` in each format under ``out_dir`` and check it against eager.

    Switches ``model`` (or its CPU copy, when it lives elsewhere) to eval mode and traces
    it at a small example shape. Each file is loaded back and run at ``(batch, seq_len)`` with a
    random initial state. Metrics: ``export_<fmt>_max_abs_diff`` over y and the final state
    (whenever the outputs could be compared), ``export_<fmt>_latency_ms`` (when the export
    passed) and ``export_eager_latency_ms``, each latency the median of ``repeats`` full
    forward calls after ``warmup``. Tags: ``rnnsweep.export.<fmt>.status`` ok/failed and
    ``rnnsweep.export.<fmt>.error`` with the reason.
    """
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    model.eval()
    spec = ModelSpec.of(model)
    generator = torch.Generator().manual_seed(0)
    example = _inputs(spec, _other_than(batch, 2), _other_than(seq_len, 3), generator)
    inputs = _inputs(spec, batch, seq_len, generator)
    eager = StreamingSession.from_model(model)
    expected = _flat(eager.forward(inputs[0], inputs[1:]))
    report = ExportReport()
    report.metrics["export_eager_latency_ms"] = _median_ms(
        functools.partial(eager.forward, inputs[0], inputs[1:]), warmup, repeats
    )
    report.tags[f"{EXPORT_TAG_PREFIX}shapes"] = (
        f"exported at batch={example[0].shape[0]} seq={example[0].shape[1]}, "
        f"verified at batch={batch} seq={seq_len}"
    )
    for fmt in formats:
        path = out_dir / FILENAMES[fmt]
        try:
            if fmt == "onnx":
                _require_onnx()
                report.tags[f"{EXPORT_TAG_PREFIX}onnx.exporter"] = export_onnx(model, example, path)
            else:
                export_torchscript(model, example, path, optimize=fmt.endswith("_optimized"))
            session = open_exported(path)
            actual = _flat(session.forward(inputs[0], inputs[1:]))
            diff = _compare(actual, expected, atol, rtol)
            report.metrics[f"export_{fmt}_max_abs_diff"] = diff
            report.metrics[f"export_{fmt}_latency_ms"] = _median_ms(
                functools.partial(session.forward, inputs[0], inputs[1:]), warmup, repeats
            )
            report.tags[export_status_tag(fmt)] = "ok"
        except Exception as exc:  # a failure is this format's result
            report.tags[export_status_tag(fmt)] = "failed"
            report.tags[f"{EXPORT_TAG_PREFIX}{fmt}.error"] = error_summary(exc, limit=500)
            if isinstance(exc, ParityError) and exc.max_abs_diff is not None:
                report.metrics[f"export_{fmt}_max_abs_diff"] = exc.max_abs_diff
        if path.is_file():
            report.files.append(path)
    return report


def _compare(actual: Tensors, expected: Tensors, atol: float, rtol: float) -> float:
    if len(actual) != len(expected):
        raise ParityError(f"{len(actual)} outputs, eager has {len(expected)}")
    pairs = list(zip(actual, expected, strict=True))
    for name, (got, want) in zip(("y", "h_n", "c_n"), pairs, strict=False):
        if got.shape != want.shape:
            raise ParityError(
                f"{name} has shape {tuple(got.shape)}, eager {tuple(want.shape)}: "
                "the export baked in its example shapes (a Python loop over time?)"
            )
    diff = max((got - want).abs().max().item() for got, want in pairs)
    if not all(torch.allclose(got, want, rtol=rtol, atol=atol) for got, want in pairs):
        raise ParityError(f"max abs diff {diff:.3g} exceeds atol={atol} rtol={rtol}", diff)
    return diff


def _require_onnx() -> None:
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"{name} is not importable: {INSTALL_HINT}") from exc


def _static_axes(proto) -> list[str]:
    """Batch/sequence axes of input x that the exporter turned into constants."""
    x = next(i for i in proto.graph.input if i.name == "x")
    dims = x.type.tensor_type.shape.dim
    return [f"{axis}={dims[i].dim_value}" for i, axis in enumerate(("batch", "seq"))
            if not dims[i].dim_param]


def _declare_dynamic_output(proto) -> None:
    # The dynamo exporter annotates y and the intermediates after nn.LSTM/GRU with the
    # example sequence length, and onnxruntime warns on every run whose length differs.
    # Intermediate annotations are optional (onnxruntime infers its own), so drop them and
    # give y the symbols of x.
    del proto.graph.value_info[:]
    x = next(i for i in proto.graph.input if i.name == "x").type.tensor_type.shape.dim
    y = next(o for o in proto.graph.output if o.name == "y").type.tensor_type.shape.dim
    for axis in (0, 1):
        if x[axis].dim_param:
            y[axis].dim_param = x[axis].dim_param


def _inputs(spec: ModelSpec, batch: int, seq_len: int, generator: torch.Generator) -> Tensors:
    x = torch.randn(batch, seq_len, spec.input_size, generator=generator)
    shape = (spec.num_layers, batch, spec.hidden_size)
    return (x, *(torch.randn(shape, generator=generator) for _ in range(spec.state_count)))


def _other_than(n: int, preferred: int) -> int:
    # torch.export specialises axes of size 0 or 1, so example sizes start at 2.
    return preferred if n != preferred else preferred + 1


def _distinct(example: Tensors) -> Tensors:
    # Passing one tensor as both h0 and c0 (say, a shared zeros) makes the dynamo exporter
    # wire the c0 input into both places and drop h0: give every input its own storage.
    return tuple(t.clone() for t in example)


def _flat(result: tuple[torch.Tensor, Tensors]) -> Tensors:
    y, state = result
    return (y, *state)


def _median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    # Exports run on CPU, so there is no asynchronous device work to wait for.
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


"""Stateful streaming inference over a recurrent model, eager or exported.

A serving program opens a model once (``StreamingSession.from_model`` or ``open_exported``),
feeds it chunks ``(batch, chunk_len, input_size)`` of a stream with ``step`` and calls
``reset`` before a new sequence. The session carries the recurrent state between chunks, so
the concatenated chunk outputs equal one forward pass over the whole sequence;
``measure_streaming`` checks exactly that and times the chunks.

Exported files come from ``rnnsweep.deploy.export``, which stores a ``ModelSpec`` inside each file
so a session can build the zero state without the Python model. Sessions over exported files
run on CPU; a missing, corrupt or foreign file raises ``ExportedModelError``.
"""

from __future__ import annotations

import json
import pathlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from rnnsweep.deploy.model import RecurrentModel

# Name of the ONNX metadata entry and of the TorchScript extra file holding the ModelSpec.
METADATA_KEY = "rnnsweep.json"
TORCHSCRIPT_SUFFIXES = (".pt", ".ts")
INSTALL_HINT = "install the 'export' extra"

Tensors = tuple[torch.Tensor, ...]
# Calls the model once: (x, *state) -> (y, *new_state).
Forward = Callable[..., Sequence[torch.Tensor]]


class ExportedModelError(RuntimeError):
    """An exported model file is missing, unreadable or not written by rnnsweep.deploy.export."""


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a model's recurrent state, stored inside every exported file."""

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int

    @classmethod
    def of(cls, model: RecurrentModel) -> ModelSpec:
        return cls(model.cell, model.input_size, model.hidden_size, model.num_layers)

    @classmethod
    def from_json(cls, text: str | bytes, path: pathlib.Path) -> ModelSpec:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise ExportedModelError(
                f"{path}: missing or invalid {METADATA_KEY} metadata (not written by "
                f"rnnsweep.deploy.export?): {error_summary(exc)}"
            ) from exc

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def state_count(self) -> int:
        return 2 if self.cell == "lstm" else 1

    def input_names(self) -> list[str]:
        return ["x", "h0", "c0"][: 1 + self.state_count]

    def output_names(self) -> list[str]:
        return ["y", "h_n", "c_n"][: 1 + self.state_count]


class StreamingSession:
    """Runs a model chunk by chunk, carrying the recurrent state across chunks."""

    def __init__(self, forward: Forward, spec: ModelSpec) -> None:
        self._forward, self.spec = forward, spec
        self._state: Tensors | None = None

    @classmethod
    def from_model(cls, model: RecurrentModel) -> StreamingSession:
        spec = ModelSpec.of(model)
        lstm = spec.cell == "lstm"

        def forward(x: torch.Tensor, *state: torch.Tensor) -> Tensors:
            if lstm:
                h, c = state
                y, _, (h_n, c_n) = model(x, (h, c))
                return y, h_n, c_n
            y, _, h_n = model(x, state[0])
            return y, h_n

        return cls(forward, spec)

    def forward(self, x: torch.Tensor, state: Tensors) -> tuple[torch.Tensor, Tensors]:
        """One stateless call: the output for ``x`` and the state after it."""
        with torch.inference_mode():
            y, *new_state = self._forward(x, *state)
        return y, tuple(new_state)

    def zero_state(self, batch: int, like: torch.Tensor) -> Tensors:
        shape = (self.spec.num_layers, batch, self.spec.hidden_size)
        return tuple(like.new_zeros(shape) for _ in range(self.spec.state_count))

    def step(self, chunk: torch.Tensor) -> torch.Tensor:
        """The output for the next chunk of the current sequence."""
        batch = chunk.shape[0]
        if self._state is None:
            self._state = self.zero_state(batch, chunk)
        elif self._state[0].shape[1] != batch:
            raise ValueError(
                f"chunk batch {batch} differs from the stream's batch "
                f"{self._state[0].shape[1]}; call reset() to start a new sequence"
            )
        y, self._state = self.forward(chunk, self._state)
        return y

    def reset(self) -> None:
        """Forget the carried state: the next chunk starts a new sequence."""
        self._state = None


def load_torchscript(path: str | pathlib.Path) -> StreamingSession:
    """A session over a TorchScript file from ``rnnsweep.deploy.export``."""
    path = _existing(path)
    extra = {METADATA_KEY: ""}
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated upstream; loading TorchScript is this function's purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch reports corrupt archives as a bare RuntimeError
        raise ExportedModelError(
            f"{path}: not a readable TorchScript file ({error_summary(exc)})"
        ) from exc
    spec = ModelSpec.from_json(extra[METADATA_KEY], path)
    return StreamingSession(module, spec)


def load_onnx(path: str | pathlib.Path) -> StreamingSession:
    """A session over an ONNX file from ``rnnsweep.deploy.export`` run by onnxruntime on CPU."""
    path = _existing(path)
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"onnxruntime is not importable: {INSTALL_HINT}") from exc
    options = onnxruntime.SessionOptions()
    # Same thread count as torch, so latencies against eager compare like with like; no
    # spinning, because idle onnxruntime threads that spin starve torch's threads when both
    # share the cores of one process.
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, ...)
        raise ExportedModelError(
            f"{path}: not a readable ONNX model ({error_summary(exc)})"
        ) from exc
    metadata = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "")
    spec = ModelSpec.from_json(metadata, path)
    names = [i.name for i in session.get_inputs()]

    def forward(*tensors: torch.Tensor) -> list[torch.Tensor]:
        arrays = (t.detach().cpu().contiguous().numpy() for t in tensors)
        feed = dict(zip(names, arrays, strict=True))
        return [torch.from_numpy(out) for out in session.run(None, feed)]

    return StreamingSession(forward, spec)


def open_exported(path: str | pathlib.Path) -> StreamingSession:
    """Open a file written by rnnsweep.deploy.export, choosing the runtime by its suffix."""
    path = pathlib.Path(path)
    if path.suffix == ".onnx":
        return load_onnx(path)
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        return load_torchscript(path)
    expected = ", ".join((".onnx", *TORCHSCRIPT_SUFFIXES))
    raise ExportedModelError(f"{path}: unknown suffix {path.suffix!r}, expected one of {expected}")


@dataclass
class StreamReport:
    metrics: dict[str, float]
    parity_ok: bool
    # Every timed chunk's latency, in order: the samples the percentiles describe, from
    # which ``rnnsweep.compare`` bootstraps its interval for the p50.
    latencies_ms: list[float] = field(default_factory=list)


def measure_streaming(
    model: RecurrentModel,
    x: torch.Tensor,
    *,
    chunk_len: int,
    warmup: int = 3,
    repeats: int = 20,
    atol: float = 1e-5,
    session: StreamingSession | None = None,
) -> StreamReport:
    """Stream ``x`` through ``session`` (default: the eager model) in chunks and time it.

    ``warmup`` untimed passes over the whole sequence come first, then ``repeats`` timed
    passes, each starting from ``reset()``. Every timed pass is compared against ONE forward
    pass of ``model`` over the whole of ``x``; ``stream_max_abs_diff`` is the worst over the
    passes and parity holds when it is within ``atol``. Latency percentiles are over all
    timed chunks; ``stream_chunks_per_s`` divides their count by their summed latency, so
    the reset and the parity check between passes are not counted.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    if session is None:
        session = StreamingSession.from_model(model)
    with torch.inference_mode():
        reference = model(x)[0]
    chunks = x.split(chunk_len, dim=1)
    for _ in range(warmup):
        _stream(session, chunks)
    latencies_ms: list[float] = []
    diffs = []
    for _ in range(repeats):
        outputs, times = _stream(session, chunks)
        latencies_ms += times
        streamed = torch.cat(outputs, dim=1).to(reference.device)
        diffs.append((streamed - reference).abs().max())
    # torch's max propagates NaN where Python's max() would drop it.
    worst = torch.stack(diffs).max().item()
    p50, p99 = torch.tensor(latencies_ms, dtype=torch.float64).quantile(
        torch.tensor([0.5, 0.99], dtype=torch.float64)
    ).tolist()
    metrics = {
        "stream_max_abs_diff": worst,
        "stream_latency_ms_p50": p50,
        "stream_latency_ms_p99": p99,
        "stream_chunks_per_s": len(latencies_ms) / (sum(latencies_ms) / 1e3),
    }
    return StreamReport(metrics, parity_ok=worst <= atol,  # False for NaN, as it should be
                        latencies_ms=latencies_ms)


def _stream(
    session: StreamingSession, chunks: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[float]]:
    """One pass over a sequence: the chunk outputs and each chunk's latency in ms."""
    session.reset()
    device = chunks[0].device
    outputs, times = [], []
    for chunk in chunks:
        _sync(device)
        start = time.perf_counter()
        outputs.append(session.step(chunk))
        _sync(device)  # CUDA kernels are asynchronous: wait for them before reading the clock
        times.append((time.perf_counter() - start) * 1e3)
    return outputs, times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _existing(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ExportedModelError(f"{path}: no such file")
    return path


def error_summary(exc: BaseException, limit: int = 300) -> str:
    """The exception's type and first line: enough for a one-line message or an MLflow tag."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:limit]

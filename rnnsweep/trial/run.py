"""One trial: build the model, run the guarded training steps and the benchmarks.

Pure trial logic: it knows nothing of Ray or MLflow. It returns a ``TrialRecord`` and
never raises for a problem inside the trial; the problem is the record's outcome.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from rnnsweep import contract
from rnnsweep.config.schema import TRAINING_KEYS, TaskConfig
from rnnsweep.contract import (
    CONFIG_HASH_TAG,
    DIVERGED,
    FAILED,
    KILLED,
    NOISE_REASON_TAG,
    NOISY_TAG,
    OK,
    OUTCOME_TAG,
    REASON_TAG,
    STOPPED,
    TIMED_OUT,
    UNSUPPORTED,
    from_tag,
    to_tag,
)
from rnnsweep.record import TrialRecord, config_hash, flatten
from rnnsweep.text import first_line
from rnnsweep.trial import checkpoint, environment, flops, live, noise, timing, training
from rnnsweep.trial.checkpoint import Checkpointer
from rnnsweep.trial.config_file import config_yaml
from rnnsweep.trial.data import Batch, Source
from rnnsweep.trial.models import RecurrentNet, check_output, split_output, with_impl

LOGGED_SERIES = ("loss", "grad_norm", "grad_norm_clipped", "saturation", "grad_scale",
                 *training.PER_STEP)


# Outcomes of a trial stopped from outside (a stopper, its time limit, the sweep).
ENDED_EARLY = (STOPPED, TIMED_OUT, KILLED)


class Unsupported(Exception):
    """This combination cannot run on this device; the reason is recorded, not raised."""


def run_trial(cfg: DictConfig) -> TrialRecord:
    """Threads follow ``hardware.num_cpus`` (set to what Ray granted, under the launcher)."""
    container = _plain(cfg)
    record = TrialRecord(params=flatten(container), started_at=time.time())
    record.tags[CONFIG_HASH_TAG] = config_hash(record.params)
    record.artifacts["config.yaml"] = config_yaml(container).encode()
    try:
        _run(cfg, record, _threads(cfg))
    except Unsupported as exc:
        record.outcome, record.reason = UNSUPPORTED, str(exc)
    except Exception as exc:  # a trial's failure is its record, never the sweep's crash
        record.outcome, record.reason = FAILED, f"{type(exc).__name__}: {exc}"
        record.artifacts["error.txt"] = traceback.format_exc().encode()
    record.finished_at = time.time()
    record.tags[OUTCOME_TAG] = record.outcome
    if record.reason:
        record.tags[REASON_TAG] = record.reason[:4000]
    return record


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hardware.device=cuda but this worker has no CUDA device")
    return torch.device(requested)


def memory_fraction(num_gpus: float, device_type: str) -> float | None:
    """The share of one GPU's memory a trial may allocate: its share of the GPU when Ray
    granted it a fraction of one, else no cap."""
    if device_type == "cuda" and 0 < float(num_gpus) < 1:
        return float(num_gpus)
    return None


def _compute_device(cfg: DictConfig, record: TrialRecord) -> str:
    """``hardware.device`` (what Ray granted), unless the test-only
    ``hardware.compute_device`` says otherwise; that override is recorded, never silent."""
    override = OmegaConf.select(cfg, "hardware.compute_device")
    if override is None:
        return _name(cfg.hardware.device)
    record.tags[contract.COMPUTE_DEVICE_TAG] = (
        f"{_name(override)} (test-only override of hardware.device={_name(cfg.hardware.device)})")
    return _name(override)


def build_model(cfg: DictConfig, output_size: int = 1) -> nn.Module:
    """The ``model`` config's ``_target_``, built with its keys and the task's output size."""
    torch.manual_seed(cfg.seed)  # same seed, same weights: fused and loop stay comparable
    model = instantiate(_plain(cfg.model), output_size=output_size)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model._target_={cfg.model._target_} built a "
                        f"{type(model).__name__}, not a torch.nn.Module")
    return model


def build_source(cfg: DictConfig, device: torch.device) -> Source:
    """The ``task`` config's batch source (``rnnsweep.trial.data`` says what it offers)."""
    own = {k: v for k, v in _plain(cfg.task).items() if k not in TRAINING_KEYS}
    source: Source = instantiate(own, batch=cfg.batch, seq_len=cfg.seq_len,
                                 input_size=cfg.model.input_size, device=device, seed=cfg.seed)
    return source


def probe_model(model: nn.Module, cfg: DictConfig, output_size: int,
                device: torch.device) -> None:
    """Two sequences through the model: its output must be what the task scores."""
    with torch.no_grad():
        result = model(torch.zeros(2, cfg.seq_len, cfg.model.input_size, device=device))
    check_output(split_output(result)[0], 2, cfg.seq_len, output_size)


def _run(cfg: DictConfig, record: TrialRecord, num_threads: int) -> None:
    torch.set_num_threads(num_threads)
    device = resolve_device(_compute_device(cfg, record))
    record.tags.update(environment.device_tags(device))
    fraction = memory_fraction(cfg.hardware.num_gpus, device.type)
    if fraction is not None:
        # A trial granted part of a GPU fails alone when it outgrows its share, rather
        # than starving the trials packed beside it.
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        record.tags[contract.CUDA_MEMORY_FRACTION_TAG] = f"{fraction:g}"
    peak = environment.PeakMemory(device)
    peak.start()  # before the model exists: its weights are part of the trial's memory
    source = build_source(cfg, device)
    model = build_model(cfg, source.output_size).to(device)
    _check_workload(cfg, model)
    probe_model(model, cfg, source.output_size, device)
    amp_dtype = _check_precision(cfg, model, device)
    metrics = record.metrics
    counted = flops.forward_flops(model, cfg.model.input_size, cfg.seq_len, device)
    seq_flops = counted.per_sequence
    metrics["forward_flops_per_seq"] = float(seq_flops)
    record.tags[contract.FLOPS_SOURCE_TAG] = counted.source
    if cfg.workload.train:
        with _loaded(record, "step_time_ms", device, num_threads, _shared(cfg)):
            _train(cfg, model, device, amp_dtype, record, seq_flops, source)
        if record.outcome in ENDED_EARLY:  # its device is wanted elsewhere, now
            metrics.update(peak.stop())
            return
    if cfg.workload.bench:
        _bench(cfg, model, device, amp_dtype, num_threads, record, seq_flops)
    if cfg.workload.deploy:
        assert isinstance(model, RecurrentNet)  # _check_workload refused any other model
        with _loaded(record, "stream_latency_ms_p50", device, num_threads, _shared(cfg)):
            _deploy(cfg, model, device, record)
    metrics.update(peak.stop())
    record.tags[contract.PEAK_MEM_KIND_TAG] = peak.kind


def _check_workload(cfg: DictConfig, model: nn.Module) -> None:
    """Workloads that reach into the built-in models' internals say so, never substitute."""
    if isinstance(model, RecurrentNet):
        return
    target = cfg.model._target_
    if cfg.workload.compare_impl:
        raise Unsupported(f"workload.compare_impl: the fused-vs-loop comparison applies to "
                          f"the built-in models (model=lstm|gru|rnn), not {target}")
    if cfg.workload.deploy:
        raise Unsupported(f"workload=deploy: streaming and export need a model that carries "
                          f"its state (forward(x, state) -> (y, hidden, state), like "
                          f"rnnsweep.trial.models.RecurrentNet); {target} is not one")


def _check_precision(cfg: DictConfig, model: nn.Module,
                     device: torch.device) -> torch.dtype | None:
    name = cfg.precision.autocast_dtype
    if name is None:
        return None
    dtype: torch.dtype = getattr(torch, name)
    if cfg.precision.grad_scaler and device.type != "cuda":
        raise Unsupported(f"precision={cfg.precision.name} (autocast + GradScaler) needs CUDA; "
                          f"this trial runs on {device.type}. Use precision=bf16 on CPU.")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise Unsupported(f"precision=bf16: {torch.cuda.get_device_name(device)} lacks bf16")
    # A silent fp32 run under a reduced-precision label would be a lie: probe what autocast
    # really does to this recurrent layer on this device.
    probe = torch.zeros(1, 2, cfg.model.input_size, device=device)
    try:
        with torch.inference_mode(), training.autocast(device, dtype):
            _, hidden = split_output(model(probe))
    except RuntimeError as exc:  # e.g. oneDNN has no bf16 LSTM without AVX512-BF16/AMX
        raise Unsupported(f"precision={cfg.precision.name}: {_model_name(cfg)} under "
                          f"autocast fails on {device.type}: {first_line(str(exc))}") from exc
    if hidden.dtype != dtype:
        raise Unsupported(f"precision={cfg.precision.name}: autocast on {device.type} runs "
                          f"{_model_name(cfg)} in {hidden.dtype}, not {dtype}")
    return dtype


def _train(cfg: DictConfig, model: nn.Module, device: torch.device,
           amp_dtype: torch.dtype | None, record: TrialRecord, seq_flops: int,
           source: Source) -> None:
    guard = training.GuardSettings(
        max_norm=cfg.clipping.max_norm,
        explode_threshold=cfg.guard.explode_threshold,
        vanish_threshold=cfg.guard.vanish_threshold,
        saturation_level=cfg.guard.saturation_level,
        inject_nan_steps=frozenset(cfg.guard.inject_nan_steps),
        raise_at_step=cfg.guard.raise_at_step,
        hang_at_step=OmegaConf.select(cfg, "guard.hang_at_step"),
        stop_after_nonfinite=OmegaConf.select(cfg, "guard.stop_after_nonfinite"),
    )
    # A user's task config may leave the training keys to the built-ins' defaults.
    optimizer = training.make_optimizer(
        _name(_task_key(cfg, "optimizer")), model.parameters(), _task_key(cfg, "lr"))
    hooks = training.Hooks(
        live=live.active(), batch_size=cfg.batch,
        scheduler=training.make_scheduler(_name(_task_key(cfg, "schedule")), optimizer,
                                          cfg.steps, _task_key(cfg, "lr_gamma"),
                                          _task_key(cfg, "lr_step_every")),
        checkpoint=_checkpointer(cfg, record),
        source_state=((source.state_dict, source.load_state_dict)
                      if hasattr(source, "state_dict") and hasattr(source, "load_state_dict")
                      else None))
    if hasattr(source, "validation"):
        hooks.evaluate = _evaluator(model, source, source.validation(), device, amp_dtype)
        hooks.eval_every = eval_every(cfg)
    try:
        result = training.train(model, source.batch, cfg.steps, optimizer, device, amp_dtype,
                                cfg.precision.grad_scaler, guard, loss_fn=source.loss,
                                hooks=hooks)
    finally:
        if hooks.checkpoint is not None:
            _checkpoint_metrics(record, hooks.checkpoint)
    if result.resumed_from_step:
        record.metrics["resumed_from_step"] = float(result.resumed_from_step)
        record.tags[contract.RESUMED_FROM_STEP_TAG] = to_tag(result.resumed_from_step)
    record.step_metrics.update({k: v for k, v in result.series.items()
                                if k in LOGGED_SERIES and v})
    record.sparse_metrics.update(result.sparse)
    metrics = record.metrics
    metrics.update({k: float(v) for k, v in result.counts.items()})
    done = result.last_step
    metrics["steps_done"] = float(done)
    if result.stopped:
        record.outcome, record.reason, stopped_at = result.stopped
        record.tags[contract.STOPPED_AT_STEP_TAG] = to_tag(stopped_at)
        record.tags[contract.STOP_REASON_TAG] = record.reason[:4000]
    if cfg.steps and done and result.counts.get("nonfinite_steps") == done:
        record.outcome = DIVERGED
        record.reason = f"all {done} training steps were non-finite (skipped)"
    if done:
        metrics["final_loss"] = result.series["loss"][-1]
        if not math.isfinite(metrics["final_loss"]) and record.outcome == OK:
            record.outcome = DIVERGED  # a non-finite final loss describes no model
            record.reason = f"the final training loss is {metrics['final_loss']}"
        metrics.update(source.summary(metrics["final_loss"]))
        _val_summary(metrics, result.sparse)
        # Skipped (non-finite) steps are counted above; the maxima describe the others.
        metrics["max_grad_norm"] = _finite_max(result.series["grad_norm"])
        metrics["max_grad_norm_clipped"] = _finite_max(result.series["grad_norm_clipped"])
    if result.step_times_s:
        metrics["step_time_ms"] = result.step_time_ms
        _keep_samples(record, "step_time_ms", [t * 1e3 for t in result.steady_step_times_s])
        metrics["train_seq_per_s"] = cfg.batch / (result.step_time_ms / 1e3)
        # A training step costs about three forward passes (docs/experiments.md).
        metrics["train_gflops"] = 3 * seq_flops * cfg.batch / (result.step_time_ms / 1e3) / 1e9
        record.tags[contract.OUTPUT_DTYPE_TAG] = result.output_dtype
    if "grad_scale" in result.series and result.series["grad_scale"]:
        metrics["final_grad_scale"] = result.series["grad_scale"][-1]
    if hooks.checkpoint is not None and record.outcome in (OK, DIVERGED, STOPPED):
        hooks.checkpoint.finish()  # a timed-out or failed trial keeps its way back in


def eval_every(cfg: DictConfig) -> int:
    """Held-out evaluation every this many steps: ``eval_every``, or a tenth of steps."""
    every = OmegaConf.select(cfg, "eval_every")
    return int(every) if every else max(int(cfg.steps) // 10, 1)


def _evaluator(model: nn.Module, source: Source, validation: Iterable[Batch],
               device: torch.device,
               amp_dtype: torch.dtype | None) -> Callable[[], dict[str, float]]:
    """The held-out loss (and the task's extras, as ``val_<name>``) without gradients,
    and the best held-out loss so far, which is what a training sweep picks models by."""
    batches = list(validation)
    best = [math.inf]

    def evaluate() -> dict[str, float]:
        model.eval()
        total, count = torch.zeros((), device=device), 0
        with torch.no_grad(), training.autocast(device, amp_dtype):
            for x, target in batches:
                prediction, _ = split_output(model(x))
                total += source.loss(prediction, target).float() * len(x)
                count += len(x)
        model.train()
        loss = (total / max(count, 1)).item()  # one sync per evaluation
        values = {"val_loss": loss, **{f"val_{k}": v for k, v in source.summary(loss).items()}}
        if math.isfinite(loss) and loss < best[0]:
            best[0] = loss
        values["best_val_loss"] = best[0]
        return values

    return evaluate


def _val_summary(metrics: dict[str, float], sparse: dict[str, dict[int, float]]) -> None:
    """The last held-out figures, and the best held-out loss with the step it was seen at
    (with its extras at that step)."""
    if not sparse.get("val_loss"):
        return
    for name, points in sparse.items():
        if name.startswith("val_"):
            metrics[name] = points[max(points)]
    finite = {step: v for step, v in sparse["val_loss"].items() if math.isfinite(v)}
    if finite:
        step = min(finite, key=finite.__getitem__)
        metrics["best_val_loss"] = finite[step]
        metrics["best_val_step"] = float(step)
        for name, points in sparse.items():
            if name.startswith("val_") and name != "val_loss" and step in points:
                metrics[f"best_{name}"] = points[step]


def _checkpointer(cfg: DictConfig, record: TrialRecord) -> Checkpointer | None:
    every_s = OmegaConf.select(cfg, "checkpoint.every_s")
    every_steps = OmegaConf.select(cfg, "checkpoint.every_steps")
    if not every_s and not every_steps:
        return None
    digest = record.tags[CONFIG_HASH_TAG]
    relayed = OmegaConf.select(cfg, "checkpoint.store", default="dir") == "artifacts"
    if relayed:
        directory = checkpoint.relayed_dir(digest)
    else:
        root = Path(str(OmegaConf.select(cfg, "checkpoint.dir"))).expanduser()
        directory = root.absolute() / digest
    record.tags[contract.CHECKPOINT_DIR_TAG] = str(directory)
    saver = Checkpointer(directory, every_s, every_steps,
                         bool(OmegaConf.select(cfg, "checkpoint.keep", default=False)))
    watched = live.active()
    if relayed and watched is not None:
        saver.on_save = watched.checkpoint_saved  # its worker sends each save on
    return saver


def _checkpoint_metrics(record: TrialRecord, saver: Checkpointer) -> None:
    record.metrics["checkpoint_saves"] = float(saver.saves)
    if saver.saves:
        record.metrics["checkpoint_save_ms"] = saver.save_s / saver.saves * 1e3


def _task_key(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, f"task.{key}", default=getattr(TaskConfig, key))


def _bench(cfg: DictConfig, model: nn.Module, device: torch.device,
           amp_dtype: torch.dtype | None, num_threads: int, record: TrialRecord,
           seq_flops: int) -> None:
    metrics = record.metrics
    torch.manual_seed(cfg.seed + 1)
    x = torch.randn(cfg.batch, cfg.seq_len, cfg.model.input_size, device=device)
    model.eval()
    forward = _forward_fn(model, x, device, amp_dtype)
    own = timing.time_call(forward, device, num_threads, cfg.warmup, cfg.min_run_time)
    _timed(record, "latency_ms", own, _shared(cfg))
    # What latency_ms times, so a bare loop that differs can be told why (fidelity.py).
    record.tags[contract.TIMING_SCOPE_TAG] = (
        f"median of {timing.STATISTIC}; one forward of the model with its per-timestep "
        "linear head, the trial's (trained) weights, under inference_mode")
    metrics["latency_ms"] = own.median_ms
    metrics["latency_ms_per_seq"] = own.median_ms / cfg.batch
    metrics["throughput_seq_per_s"] = cfg.batch / own.median_s
    metrics["throughput_tok_per_s"] = cfg.batch * cfg.seq_len / own.median_s
    metrics["gflops"] = seq_flops * cfg.batch / own.median_s / 1e9
    metrics["matmul_gflops"] = timing.matmul_gflops(device, num_threads)
    metrics["flop_utilization"] = metrics["gflops"] / metrics["matmul_gflops"]
    if cfg.workload.compare_impl:
        assert isinstance(model, RecurrentNet)  # _check_workload refused any other model
        other_impl = "loop" if model.impl == "fused" else "fused"
        other = with_impl(model, other_impl).eval()  # the trained weights, if any
        other_forward = _forward_fn(other, x, device, amp_dtype)
        theirs = timing.time_call(other_forward, device, num_threads, cfg.warmup,
                                  cfg.min_run_time)
        with torch.inference_mode():
            diff = (forward()[0].float() - other_forward()[0].float()).abs().max().item()
        times = {model.impl: own, other_impl: theirs}
        _timed(record, f"latency_ms_{other_impl}", theirs, _shared(cfg))
        # The trial's own implementation was timed above as latency_ms: the same blocks.
        record.step_metrics[f"timing/latency_ms_{model.impl}"] = (
            record.step_metrics["timing/latency_ms"])
        for suffix in ("iqr_ms", "blocks", "other_cpus"):
            if f"latency_{suffix}" in metrics:
                metrics[f"latency_{model.impl}_{suffix}"] = metrics[f"latency_{suffix}"]
        metrics["latency_ms_fused"] = times["fused"].median_ms
        metrics["latency_ms_loop"] = times["loop"].median_ms
        metrics["fused_speedup"] = times["loop"].median_s / times["fused"].median_s
        metrics["impl_max_abs_diff"] = diff


# Block times kept per timed metric (for ``rnnsweep.compare``'s confidence intervals).
MAX_BLOCKS_KEPT = 200


def _timed(record: TrialRecord, metric: str, measured: timing.Timing, shared: str) -> None:
    """A timed figure's spread, the load beside it, and its noise verdict on the record:
    metrics ``<metric-stem>_iqr_ms``/``_blocks``/``_other_cpus``, the block times as the
    series ``timing/<metric>``, and the trial's ``rnnsweep.timing.noisy``/``noise_reason``
    tags (noisy when any of its timed figures is)."""
    stem = metric.replace("latency_ms", "latency")
    record.metrics[f"{stem}_iqr_ms"] = measured.iqr_s * 1e3
    record.metrics[f"{stem}_blocks"] = float(measured.blocks)
    if measured.load is not None:
        record.metrics[f"{stem}_other_cpus"] = measured.load.other_cpus
    _keep_samples(record, metric, [t * 1e3 for t in measured.times_s])
    noisy, reason = measured.verdict(shared)
    _add_verdict(record, metric, noisy, reason)


def _keep_samples(record: TrialRecord, metric: str, samples_ms: list[float]) -> None:
    """The samples a timed metric summarises (timing blocks, steady training steps,
    streamed chunks) as the series ``timing/<metric>``, at most ``MAX_BLOCKS_KEPT`` of them:
    ``rnnsweep.compare`` bootstraps its confidence interval from these."""
    if len(samples_ms) > MAX_BLOCKS_KEPT:
        # A random subset, in order: every k-th would pick the same chunk positions in
        # every streamed pass (the first after a reset far beyond its share).
        kept = sorted(random.Random(0).sample(range(len(samples_ms)), MAX_BLOCKS_KEPT))
        samples_ms = [samples_ms[i] for i in kept]
    record.step_metrics[f"timing/{metric}"] = samples_ms


def _add_verdict(record: TrialRecord, metric: str, noisy: bool, reason: str) -> None:
    tags = record.tags
    if noisy:
        earlier = tags.get(NOISE_REASON_TAG, "")
        tags[NOISE_REASON_TAG] = "; ".join(
            filter(None, [earlier, f"{metric}: {reason}"]))[:4000]
    tags[NOISY_TAG] = to_tag(noisy or from_tag(tags.get(NOISY_TAG), bool, False))


@contextmanager
def _loaded(record: TrialRecord, metric: str, device: torch.device, threads: int,
            shared: str) -> Iterator[None]:
    """A noise verdict from the load beside a timed phase that has no blocks of its own
    (training steps, streaming chunks): only the load and sharing tests apply."""
    window = noise.LoadWindow(device.index or 0 if device.type == "cuda" else None)
    window.start()
    yield
    if metric in record.metrics:
        load = window.stop()
        record.metrics[f"{metric.removesuffix('_ms')}_other_cpus"] = load.other_cpus
        _add_verdict(record, metric, *noise.verdict(1.0, 0.0, noise.MIN_BLOCKS, load, threads,
                                                    shared))


def _shared(cfg: DictConfig) -> str:
    """Why this trial's device was shared with others, as far as the trial can know (the
    launcher's placement tags tell the rest)."""
    return "hardware.exclusive=false" if cfg.hardware.get("exclusive") is False else ""


def _forward_fn(model: nn.Module, x: torch.Tensor, device: torch.device,
                amp_dtype: torch.dtype | None) -> Callable[[], Any]:
    def forward() -> Any:  # whatever the model's forward returns
        with torch.inference_mode(), training.autocast(device, amp_dtype):
            return model(x)
    return forward


def _deploy(cfg: DictConfig, model: RecurrentNet, device: torch.device,
            record: TrialRecord) -> None:
    from rnnsweep.deploy.run import run_deployment  # export libraries are an optional extra

    with tempfile.TemporaryDirectory(prefix="rnnsweep-export-") as tmp:
        out_dir = Path(tmp)
        result = run_deployment(model, input_size=cfg.model.input_size, batch=cfg.batch,
                                seq_len=cfg.seq_len, chunk_len=cfg.chunk_len, out_dir=out_dir,
                                device=device, warmup=cfg.warmup, repeats=cfg.repeats)
        record.metrics.update(result.metrics)
        record.tags.update(result.tags)
        for metric, samples in result.samples_ms.items():
            _keep_samples(record, metric, samples)
        for path in result.files:
            record.artifacts[f"export/{path.relative_to(out_dir)}"] = path.read_bytes()


def _finite_max(values: list[float]) -> float:
    return max((v for v in values if math.isfinite(v)), default=math.nan)


def _threads(cfg: DictConfig) -> int:
    cpus = cfg.hardware.num_cpus
    return max(1, int(cpus)) if cpus else len(os.sched_getaffinity(0))


def _plain(node: DictConfig) -> dict[str, Any]:
    """A config node as plain Python values (enum members as their names) for a
    constructor that knows nothing of OmegaConf."""
    plain = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    if not isinstance(plain, dict):  # a DictConfig always converts to a dict
        raise TypeError(f"expected a mapping, got {type(plain).__name__}")
    # OmegaConf allows any primitive as a key; the schema's keys are all names.
    return cast(dict[str, Any], plain)


def _model_name(cfg: DictConfig) -> str:
    return _name(cfg.model.cell) if "cell" in cfg.model else cfg.model._target_


def _name(value: object) -> str:
    """Enum-typed config values as plain strings (model code takes no config types)."""
    return str(value)

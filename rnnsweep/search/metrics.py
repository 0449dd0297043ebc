"""The summary metrics a trial records, by what its workload runs: an objective the
workload never produces is refused before anything starts, rather than warned about once
per trial. Checked against real trials in tests/test_optuna_sweeper.py."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

ALWAYS = {"forward_flops_per_seq", "peak_mem_mb", "peak_rss_mb"}
TRAIN = {"final_loss", "val_loss", "max_grad_norm", "max_grad_norm_clipped", "step_time_ms",
         "step_time_other_cpus", "train_gflops", "train_seq_per_s", "final_grad_scale",
         "nonfinite_steps", "nan_forward_steps", "nan_backward_steps", "nan_loss_steps",
         "exploding_steps", "vanishing_steps"}
# What a built-in task adds through its summary(final_loss).
TASK_SUMMARY = {"char_lm": {"bits_per_char"}}
BENCH = {"latency_ms", "latency_ms_per_seq", "latency_blocks", "latency_iqr_ms",
         "latency_other_cpus", "throughput_seq_per_s", "throughput_tok_per_s", "gflops",
         "matmul_gflops", "flop_utilization"}
COMPARE_IMPL = {"fused_speedup", "impl_max_abs_diff", "latency_ms_fused", "latency_ms_loop",
                *(f"latency_{impl}_{suffix}" for impl in ("fused", "loop")
                  for suffix in ("blocks", "iqr_ms", "other_cpus"))}
DEPLOY = {"stream_chunks_per_s", "stream_latency_ms_p50", "stream_latency_ms_p50_other_cpus",
          "stream_latency_ms_p99", "stream_max_abs_diff", "export_eager_latency_ms",
          *(f"export_{fmt}_{what}" for fmt in ("onnx", "torchscript", "torchscript_optimized")
            for what in ("latency_ms", "max_abs_diff"))}
KNOWN = ALWAYS | TRAIN | BENCH | COMPARE_IMPL | DEPLOY | set().union(*TASK_SUMMARY.values())


def produced(cfg: DictConfig) -> set[str] | None:
    """The metrics a trial of ``cfg`` records; None when a task of the user's own
    (``task._target_``) may add any metric of its own."""
    select = OmegaConf.select
    found = set(ALWAYS)
    if select(cfg, "workload.train", default=True):
        found |= TRAIN | TASK_SUMMARY.get(str(select(cfg, "task.name", default="")), set())
    if select(cfg, "workload.bench", default=True):
        found |= BENCH
        if select(cfg, "workload.compare_impl", default=False):
            found |= COMPARE_IMPL
    if select(cfg, "workload.deploy", default=False):
        found |= DEPLOY
    if select(cfg, "task._target_", default=None) and not str(
            select(cfg, "task._target_")).startswith("rnnsweep."):
        return None
    return found


def check(cfg: DictConfig, key: str, metric: str) -> str | None:
    """Why ``metric`` (the value of ``key``) can never be measured here, or None. A task of
    the user's own may record any name of its own, but not rnnsweep's metrics of a part
    of the workload that is off (``latency_ms`` without ``workload.bench``)."""
    found = produced(cfg)
    if found is None:
        builtin = produced(OmegaConf.masked_copy(cfg, [k for k in ("workload",) if k in cfg]))
        task_names = set().union(*TASK_SUMMARY.values())
        if metric in KNOWN - task_names - builtin:
            return _unmeasured(key, metric, cfg, builtin)
        return None
    if metric not in found:
        return _unmeasured(key, metric, cfg, found)
    return None


def _unmeasured(key: str, metric: str, cfg: DictConfig, allowed: set[str]) -> str:
    workload = OmegaConf.select(cfg, "workload", default=None)
    on = "+".join(k for k in ("train", "bench", "deploy") if workload and workload.get(k))
    return (f"{key}={metric}: this workload ({on or 'nothing'}) never records {metric}; "
            f"allowed: {', '.join(sorted(allowed))}")

"""What a sweep is judged by: ``objective.metric`` (by default the workload's headline
metric) and ``objective.direction``. The one place the default is decided; scoring the
trials is ``rnnsweep.sweep.objective``'s."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

DEFAULT_DIRECTION = "minimize"


def settings(cfg: DictConfig | None) -> tuple[str, str]:
    if cfg is None:
        cfg = OmegaConf.create()
    metric = OmegaConf.select(cfg, "objective.metric") or default_metric(cfg)
    direction = OmegaConf.select(cfg, "objective.direction", default=DEFAULT_DIRECTION)
    return str(metric), str(direction)


def default_metric(cfg: DictConfig) -> str:
    """The workload's headline, lower is better: forward latency when the trial times
    it, the best held-out loss when it only trains on a built-in task (models are chosen
    by how they generalise, not by how well they fit), streaming latency when it deploys."""
    if OmegaConf.select(cfg, "workload.bench", default=True):
        return "latency_ms"
    if OmegaConf.select(cfg, "workload.train", default=False):
        # A user's batch source may have no held-out set (``validation``): its trials
        # are scored by their final training loss unless objective.metric says otherwise.
        task = OmegaConf.select(cfg, "task._target_", default=None)
        builtin = task is None or str(task).startswith("rnnsweep.trial.data.")
        return "best_val_loss" if builtin else "final_loss"
    return "stream_latency_ms_p50"

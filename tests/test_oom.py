"""A trial that Ray's memory monitor kills ends FAILED "out of memory" with its peak,
after the retries ``ray.max_retries`` allows, and Ray's pages about it stay off the
terminal.

The monitor is made to fire without stressing this shared machine: the sweep's Ray is
started with its kill threshold (``RAY_memory_usage_threshold``, a fraction of the
machine's memory) half a GiB above what the machine uses now, so that the sweep's own
processes and a trial that keeps what it allocates (at most 1 GiB) cross it.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from conftest import start_cli, toy
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

GROWING_TASK = '''
import time

import torch


class Growing:
    """A batch source that keeps a block of every batch it made, up to a cap."""

    def __init__(self, batch, seq_len, input_size, device, seed, mb_per_step=32, cap_mb=1024):
        self.output_size = 1
        self.x = torch.randn(batch, seq_len, input_size)
        self.y = torch.zeros(batch, seq_len, 1)
        self.kept, self.mb, self.cap = [], mb_per_step, cap_mb

    def batch(self, step):
        if len(self.kept) * self.mb < self.cap:
            self.kept.append(b"x" * (self.mb << 20))  # written, so resident
        time.sleep(0.05)
        return self.x, self.y

    def loss(self, prediction, target):
        return torch.nn.functional.mse_loss(prediction.float(), target)

    def summary(self, final_loss):
        return {}
'''


def _threshold() -> str:
    """Half a GiB above the machine's memory in use now, as a fraction of its total."""
    info = {line.split(":")[0]: int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()}
    used = info["MemTotal"] - info["MemAvailable"]
    return f"{(used + 2**29) / info['MemTotal']:.4f}"


def test_a_trial_killed_for_memory_fails_out_of_memory_within_its_retries(tmp_path):
    (tmp_path / "growmods.py").write_text(textwrap.dedent(GROWING_TASK))
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "growing.yaml").write_text(
        "_target_: growmods.Growing\nname: growing\n")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    began = time.monotonic()
    proc = start_cli(["-m", "--config-dir", str(tmp_path / "conf"),
                      *toy("task=growing", "steps=100000", "workload=train",
                           "hardware.num_cpus=1", "batch=1", "ray.max_retries=1"),
                      f"tracking.uri={store}"], tmp_path,
                     extra_env={"RAY_memory_usage_threshold": _threshold(),
                                "PYTHONPATH": f"{Path(__file__).parents[1]}:{tmp_path}"})
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    took = time.monotonic() - began
    assert proc.returncode == 1, err[-3000:]
    assert took < 180, took
    # Ray's page per kill ("... oom retries remaining ...", 40 lines each) is not shown.
    assert "(raylet)" not in out and "oom retries" not in out + err, out[-3000:]
    assert len(out.splitlines()) < 20, out[-3000:]

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("rnnsweep")
    (trial,) = [r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("rnnsweep.role") != "sweep"]
    assert trial.info.status == "FAILED"
    reason = trial.data.tags["rnnsweep.reason"]
    assert reason.startswith("out of memory: Ray's memory monitor killed its worker using "), reason
    assert reason.endswith("after 1 retries"), reason
    assert trial.data.tags["rnnsweep.retries"] == "1"  # ray.max_retries, and no more
    assert trial.data.metrics["peak_rss_mb"] > 10  # the worker's size when it was killed

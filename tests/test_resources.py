"""What each trial asks Ray for, how many trials fit at once, and what Ray workers import.

The policy in ``rnnsweep.sweep.resources`` is pure, so it is checked here on node lists without
Ray; the import checks run a fresh interpreter, as a Ray worker starts one.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
from conftest import compose_cfg

from rnnsweep.sweep.job import SweepTask
from rnnsweep.sweep.resources import (
    InfeasibleRequest,
    Node,
    Request,
    check_feasible,
    concurrent_trials,
    plan,
)

CPU2 = [Node("a", "127.0.0.1", 2.0, 0.0)]
GPU_NODES = [Node("a", "10.0.0.1", 16.0, 1.0), Node("b", "10.0.0.2", 16.0, 2.0)]


def test_timed_trials_take_the_whole_node_and_training_trials_pack():
    timed = plan(compose_cfg(["workload=train_bench"]), CPU2)
    train = plan(compose_cfg(["workload=train"]), CPU2)
    assert (timed.num_cpus, timed.exclusive) == (2.0, True)
    assert (train.num_cpus, train.exclusive) == (1.0, False)
    assert concurrent_trials([timed] * 4, CPU2) == 1
    assert concurrent_trials([train] * 8, CPU2) == 2
    assert concurrent_trials([train] * 1, CPU2) == 1
    assert concurrent_trials([], CPU2) == 0


def test_shared_gpu_trials_pack_four_to_a_device():
    shared = plan(compose_cfg(["hardware=shared_gpu"]), GPU_NODES)
    assert (shared.device, shared.num_gpus, shared.exclusive) == ("cuda", 0.25, False)
    assert concurrent_trials([shared] * 20, GPU_NODES) == 12  # 3 GPUs x 4
    whole = plan(compose_cfg(["hardware=gpu"]), GPU_NODES)
    assert whole.num_gpus == 1.0
    assert concurrent_trials([whole] * 20, GPU_NODES) == 3


def test_infeasible_request_names_the_trial_and_the_nodes():
    with pytest.raises(InfeasibleRequest, match=r"trial #1 \(batch=2\) asks for CPU=1, GPU=1 "
                                                r"but no Ray node has that \(nodes: 127.0.0.1: "
                                                r"CPU=2 GPU=0\)"):
        check_feasible({0: Request("cpu", 1, 0, False), 1: Request("cuda", 1, 1, True)},
                       CPU2, {0: "batch=1", 1: "batch=2"})


def test_ray_workers_import_neither_mlflow_nor_torch_before_the_trial():
    """A worker unpickles the trial's task function, Hydra's context and the task module
    before its first trial; MLflow there, or torch in the driver, would cost seconds on
    the sweep's critical path."""
    code = ("import sys, rnnsweep.sweep.job, rnnsweep.sweep.worker; "
            "print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))")
    worker = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert worker.stdout.strip() == "[]", worker.stderr[-2000:]
    code = "import sys, rnnsweep.sweep.launcher; print('torch' in sys.modules)"
    driver = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert driver.stdout.strip() == "False", driver.stderr[-2000:]


def test_the_task_function_leaves_the_sweep_context_behind_when_pickled():
    # Stands in for the driver's context; a lambda cannot be pickled, so it must not travel.
    task = SweepTask(context=lambda: None)
    assert pickle.loads(pickle.dumps(task)).context is None
    assert task.for_workers().context is None


def test_the_cli_keeps_ray_on_loopback_and_its_usage_statistics_at_home():
    """Asks Ray itself, in a fresh interpreter, after the CLI's switches are set."""
    code = "\n".join([
        "import os",
        "from rnnsweep.cli import keep_ray_local",
        "keep_ray_local(None)",
        "from ray._common.usage import usage_lib",
        "print(usage_lib.usage_stats_enabled(), os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'])",
    ])
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.split() == ["False", "0"], done.stderr[-2000:]

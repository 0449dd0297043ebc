"""The benchmark scripts still run: each one at its smallest size, as a user runs it.

Their figures are for people (they print them); here only that a script runs to the end
and prints its table, so that an API change elsewhere cannot leave one broken unseen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

pytestmark = pytest.mark.slow
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

SMALLEST = {
    "fidelity.py": (["--rounds", "1", "--threads", "1", "--min-run-time", "0.05",
                     "--calls", "3"], "ratio to seed_way"),
    "flop_count_cost.py": (["--rounds", "1"], ""),
    "core_overhead.py": (["--rounds", "1", "--steps", "2", "--min-run-time", "0.05",
                          "--log-repeats", "1", "--threads", "1"], ""),
    "gpu_check.py": (["--allow-cpu", "--toy"], ""),
    "launcher_overhead.py": (["--repeats", "1", "--steps", "1", "--only", "b"], ""),
    "sweep_scale.py": (["--sizes", "2", "4", "--repeats", "1"], "marginal cost per trial"),
    "team_store.py": (["--sizes", "2", "4", "--repeats", "1"], "marginal cost per trial"),
    "bare_node.py": ([], "first trial started"),
    "long_trials.py": (["--rounds", "1", "--steps", "5", "--saves", "1", "--interval", "0.01"],
                       "on/off"),
    "search.py": (["--steps", "4", "--lrs", "0.01", "--widths", "8"], "ray-tune-asha"),
}


def test_every_benchmark_script_is_covered():
    assert {p.name for p in BENCHMARKS.glob("*.py")} == set(SMALLEST)


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_at_its_smallest_size(script, tmp_path):
    args, expected = SMALLEST[script]
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout.strip(), done.stderr[-2000:]
    assert expected in done.stdout

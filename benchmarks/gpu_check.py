"""The GPU check: every CUDA path of rnnsweep, run through rnnsweep itself, in one table.

    python benchmarks/gpu_check.py                 # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --allow-cpu --toy   # plumbing only, on any machine

Each part is a real sweep of the rnnsweep CLI (embedded Ray, a throwaway MLflow store);
the figures are read back from the store:

1. Mixed precision (experiment 3, ``+sweep=precision``): 2-layer LSTM 256 -> 512, batch
   32, seq_len 100, fp32 vs fp16 (autocast + GradScaler) vs bf16. Parity: each runs in
   the dtype its label claims, with a finite loss.
2. Fused vs loop (experiment 2, ``+sweep=fused_vs_loop model=lstm``): LSTM 256 -> 512,
   T 200, batch 64, cuDNN against an LSTMCell loop with the same weights. Parity:
   max |difference| <= --parity-tol (cuDNN may use TF32 internally).
3. The batch sweep (experiment 1, ``+sweep=batch_scaling``): per-sequence speedup of
   batch 128 over batch 1.
4. Four ``hardware=shared_gpu`` trials: all on one GPU id, beside each other, each with
   its CUDA memory capped to 0.25.
5. Reported latency (batch 32 of the batch sweep) against a bare, CUDA-synchronised
   ``nn.LSTM`` loop of the same shape, to show the harness adds nothing.

Exits 1 on any parity failure, 2 when there is no CUDA device (unless --allow-cpu).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TOY = ["model.input_size=8", "model.hidden_size=16", "seq_len=10", "steps=3", "warmup=1",
       "min_run_time=0.05"]


@dataclass
class Row:
    check: str
    figure: str
    ok: bool | None  # None: a figure, not a pass/fail check

    @property
    def verdict(self) -> str:
        return {True: "ok", False: "FAIL", None: ""}[self.ok]


def sweep(store: Path, experiment: str, args: list[str], toy: bool) -> list:
    """Runs one rnnsweep sweep and returns its child runs from the store."""
    cmd = [sys.executable, "-m", "rnnsweep", "-m", *args, *(TOY if toy else []),
           f"tracking.uri=sqlite:///{store}", f"tracking.experiment={experiment}",
           f"hydra.sweep.dir={store.parent / experiment}"]
    print("$", " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, cwd=store.parent, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: a trial failed, which the table shows
        sys.exit(f"gpu_check: sweep {experiment} could not run:\n{done.stderr[-2000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100) if exp else []
    return [r for r in runs if r.data.tags.get("rnnsweep.role") != "sweep"]


def precision_rows(runs: list, cuda: bool) -> list[Row]:
    by_name = {r.data.params.get("precision.name"): r for r in runs}
    rows = []
    base = by_name.get("fp32")
    for name, dtype in (("fp32", "float32"), ("fp16", "float16"),
                        ("bf16", "bfloat16")):
        run = by_name.get(name)
        if run is None:
            rows.append(Row(f"precision {name}", "missing", False))
            continue
        tags, m = run.data.tags, run.data.metrics
        if tags.get("rnnsweep.outcome") != "OK":
            # Off CUDA, fp16 (and bf16 on some CPUs) is rightly unsupported.
            expected = not cuda and tags.get("rnnsweep.outcome") == "UNSUPPORTED"
            rows.append(Row(f"precision {name}", f"{tags.get('rnnsweep.outcome')}: "
                            f"{tags.get('rnnsweep.reason', '')[:60]}", None if expected else False))
            continue
        speedup = (base.data.metrics["step_time_ms"] / m["step_time_ms"]
                   if base and "step_time_ms" in base.data.metrics else float("nan"))
        scale = f", grad scale {m['final_grad_scale']:g}" if "final_grad_scale" in m else ""
        ok = tags.get("rnnsweep.output_dtype") == dtype and torch.isfinite(
            torch.tensor(m.get("final_loss", float("nan")))).item()
        rows.append(Row(f"precision {name} (train step)",
                        f"{m['step_time_ms']:.2f} ms, x{speedup:.2f} vs fp32, "
                        f"{tags.get('rnnsweep.output_dtype')}, loss {m['final_loss']:.4g}{scale}",
                        ok))
    return rows


def fused_rows(runs: list, tol: float) -> list[Row]:
    if len(runs) != 1 or runs[0].data.tags.get("rnnsweep.outcome") != "OK":
        return [Row("fused vs loop", "trial did not finish OK", False)]
    m = runs[0].data.metrics
    return [Row("fused vs loop (LSTM 256->512, T 200, b 64)",
                f"fused {m['latency_ms_fused']:.2f} ms, loop {m['latency_ms_loop']:.2f} ms, "
                f"x{m['fused_speedup']:.2f}; max|diff| {m['impl_max_abs_diff']:.2e}",
                m["impl_max_abs_diff"] <= tol)]


def batch_rows(runs: list) -> tuple[list[Row], float | None]:
    ok = [r for r in runs if r.data.tags.get("rnnsweep.outcome") == "OK"]
    per_seq = {int(r.data.params["batch"]): r.data.metrics["latency_ms_per_seq"] for r in ok}
    latency = {int(r.data.params["batch"]): r.data.metrics["latency_ms"] for r in ok}
    if len(per_seq) != len(runs) or 1 not in per_seq:
        return [Row("batch sweep", "trials did not finish OK", False)], None
    largest = max(per_seq)
    figures = ", ".join(f"b{b}: {per_seq[b]:.3f}" for b in sorted(per_seq))
    rows = [Row("batch sweep (ms per sequence)", figures, None),
            Row(f"batch {largest} vs 1 per sequence", f"x{per_seq[1] / per_seq[largest]:.1f}",
                None)]
    return rows, latency.get(32)


def shared_rows(runs: list) -> list[Row]:
    ok = [r for r in runs if r.data.tags.get("rnnsweep.outcome") == "OK"]
    ids = {(r.data.tags.get("rnnsweep.ray.node_id"), r.data.tags.get("rnnsweep.ray.gpu_ids"))
           for r in ok}
    beside = max((int(r.data.tags.get("rnnsweep.ray.gpu_cotenants", 0)) for r in ok), default=0)
    capped = all(r.data.tags.get("rnnsweep.cuda_memory_fraction") == "0.25" for r in ok)
    packed = len(ok) == 4 and len(ids) == 1 and capped
    return [Row("4 x shared_gpu on one GPU", f"{len(ok)}/4 OK on {len(ids)} GPU id(s), up to "
                f"{beside + 1} at once, memory capped: {capped}", packed)]


def bare_latency_ms(device: torch.device, batch: int, seq_len: int, input_size: int,
                    hidden: int, seconds: float) -> float:
    """The default trial's forward pass, bare: nn.LSTM under inference_mode, one
    synchronisation per call (CPU-GPU sync point), median over ``seconds`` of calls."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(input_size, hidden, batch_first=True).to(device).eval()
    x = torch.randn(batch, seq_len, input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for _ in range(10):  # burn-in: cuDNN picks its kernels
            lstm(x)
        sync()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            lstm(x)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without CUDA (checks the plumbing; figures mean nothing)")
    parser.add_argument("--toy", action="store_true", help="toy sizes (plumbing only)")
    parser.add_argument("--parity-tol", type=float, default=5e-3)
    parser.add_argument("--keep", type=Path, help="keep the MLflow store in this directory")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it "
              "on a machine with an NVIDIA GPU, or pass --allow-cpu to check the plumbing",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    hardware = "hardware=gpu" if cuda else "hardware=cpu"
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir.resolve() / "mlflow.db"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    name = torch.cuda.get_device_name(0) if cuda else "CPU (--allow-cpu: plumbing only)"
    print(f"gpu_check on {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version() if cuda else '-'}; store {store}", flush=True)

    rows = precision_rows(sweep(store, "gpu_check_precision",
                                ["+sweep=precision", hardware], args.toy), cuda)
    rows += fused_rows(sweep(store, "gpu_check_fused", ["+sweep=fused_vs_loop", "model=lstm",
                                                        hardware], args.toy), args.parity_tol)
    batch, latency_32 = batch_rows(sweep(store, "gpu_check_batch",
                                         ["+sweep=batch_scaling", hardware], args.toy))
    rows += batch
    if cuda:
        rows += shared_rows(sweep(store, "gpu_check_shared",
                                  ["hardware=shared_gpu", "workload=bench", "seed=0,1,2,3"],
                                  args.toy))
    else:
        rows.append(Row("4 x shared_gpu on one GPU", "skipped: no CUDA", None))
    if latency_32 is not None:
        shape = (8, 16) if args.toy else (128, 256)
        bare = bare_latency_ms(device, 32, 10 if args.toy else 100, *shape, seconds=1.0)
        rows.append(Row("latency b32: rnnsweep vs bare synced loop",
                        f"{latency_32:.3f} ms vs {bare:.3f} ms (x{latency_32 / bare:.2f})", None))

    width = max(len(r.check) for r in rows)
    print(f"\n{'check':<{width}}  {'verdict':<7}  figures")
    for row in rows:
        print(f"{row.check:<{width}}  {row.verdict:<7}  {row.figure}")
    failed = [r for r in rows if r.ok is False]
    print(f"\n{len(failed)} check(s) failed" if failed else "\nall checks passed")
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Recording at scale over HTTP (issue 21, item 4): the marginal cost per trial of a sweep
into a team's tracking server (``mlflow server`` on PostgreSQL, proxied artifacts) against
the embedded SQLite store, side by side.

Starts a real PostgreSQL and ``mlflow server`` on 127.0.0.1 (tests/team_server.py; both
stopped by their PIDs at the end), then runs
``python -m rnnsweep -m 'seed=range(N)' steps=1 workload=train`` at toy sizes, as a user
runs it (a whole CLI process, the default Ray launcher, the embedded Ray), for each size
and store, alternating (SQLite N1, server N1, SQLite N2, server N2, ...) so that drift in
the machine's load hits both. Each run gets an experiment of its own on the server and a
fresh SQLite file. Reports per run the wall time and that every trial was recorded (N
FINISHED children nested under one FINISHED parent, read back through the same store),
then per store the marginal cost per trial, (wall(N_big) - wall(N_small)) / (N_big -
N_small), paired within a repeat. Target: <= 0.1 s per trial. The driver writes each trial
with MLflow's batch API (``log_batch``: params, tags and every step's metrics in one or two
requests) and sets its status in one more.

    python benchmarks/team_store.py [--sizes 64 1000] [--repeats 1] [--timeout 1800]

Measured 2026-12-06 on this 2-core machine (load average below 1 at the start), with
``python benchmarks/team_store.py --sizes 64 1000 --repeats 1`` (single runs), after the
driver's store writes moved to writer threads (four requests a trial: create the run, one
``log-batch``, the ``PUT`` of ``config.yaml``, ``runs/update``):

    store        N    wall s   s/trial  all recorded
    server      64      21.1     0.330           yes
    sqlite      64      22.7     0.355           yes
    server    1000     129.6     0.130           yes
    sqlite    1000     106.7     0.107           yes
    marginal cost per trial, sqlite N=64 -> 1000: 0.090 s (target <= 0.1 s)
    marginal cost per trial, server N=64 -> 1000: 0.116 s (target <= 0.1 s: missed)
    tracking server + PostgreSQL CPU per trial, N=64 -> 1000: 69 ms

Before that change (the driver wrote each trial itself, six requests in a row) the server
cost 0.426 s a trial. Measured again 2026-12-06 (a later session), after each trial's
worker stopped paying for OmegaConf's deepcopy and YAML (``hydra_private.run_job``), with
``--repeats 2``: SQLite 0.084 s (repeats 0.089, 0.080), server 0.106 s (0.115, 0.096),
server + PostgreSQL CPU 69 ms a trial; every run recorded and nested. Here the server,
PostgreSQL, the driver and the trials share two cores, so the server's CPU is the
trials' CPU. Measured again 2026-12-06 (the next session), after the trial's
``config.yaml`` moved to libyaml and the driver parsed each override line once, with
``--repeats 2``: SQLite 0.057 s (0.054, 0.059), server 0.097 s (0.083, 0.112), server +
PostgreSQL CPU 69 ms a trial. A pair right after it, the old code (b13f659) then the new,
one repeat each: SQLite 0.101 s then 0.068 s, server 0.086 s then 0.105 s. The server's
figure moves with the machine's drift more than with either change.

Measured again 2026-12-06 (the session after), after each trial's Hydra job stopped
copying its ``hydra`` node twice over and the checks before the first trial stopped
judging every override line for every trial: three rounds, each the previous code
(f5a8779) then this, ``--repeats 1`` each, one after the other. Marginal cost per trial,
previous then this: SQLite 0.068/0.061, 0.078/0.064, 0.070/0.060 (medians 0.070, 0.061);
server 0.105/0.092, 0.114/0.099, 0.089/0.087 (medians 0.105, 0.092); server + PostgreSQL
CPU 63 to 79 ms a trial. Every run recorded and nested all its trials.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import cli_env, start_cli, toy  # noqa: E402
from team_server import start_mlflow_server, start_postgres  # noqa: E402

STORES = ("sqlite", "server")


@dataclass
class Sample:
    store: str
    trials: int
    wall_s: float
    recorded: int
    nested: int  # children whose mlflow.parentRunId is the parent
    parent_status: str
    server_cpu_s: float = 0.0  # CPU the tracking server and PostgreSQL spent meanwhile


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system, with reaped children's) of ``root`` and every live
    process below it, from /proc: the server's workers and PostgreSQL's backends."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier += children
    return sum(times.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def run_sweep(store: str, uri: str, experiment: str, trials: int, tmp: Path,
              timeout: float, servers: tuple[int, ...] = ()) -> Sample:
    args = ["-m", *toy("steps=1", "workload=train", f"seed=range({trials})"),
            f"tracking.uri={uri}", f"tracking.experiment={experiment}",
            f"hydra.sweep.dir={tmp}/multirun-{experiment}"]
    log_path = tmp / f"{experiment}.log"
    cpu_before = sum(tree_cpu_s(pid) for pid in servers)
    with log_path.open("w") as log:
        started = time.perf_counter()
        proc = start_cli(args, tmp, merge_output=True, stdout=log)
        try:
            proc.wait(timeout=timeout)
        except Exception:
            proc.kill()
            raise
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{store} N={trials} exited {proc.returncode}:\n"
                         f"{log_path.read_text()[-3000:]}")
    server_cpu = sum(tree_cpu_s(pid) for pid in servers) - cpu_before
    recorded, nested, status = count_runs(uri, experiment)
    return Sample(store, trials, wall, recorded, nested, status, server_cpu)


def count_runs(uri: str, experiment: str) -> tuple[int, int, str]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment).experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs([found], run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    ids = {p.info.run_id for p in parents}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    finished = sum(r.info.status == "FINISHED" for r in children)
    nested = sum(r.data.tags["mlflow.parentRunId"] in ids for r in children)
    return finished, nested, ",".join(p.info.status for p in parents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per sweep")
    parser.add_argument("--server-workers", type=int, default=2)
    opts = parser.parse_args()

    postgres = start_postgres()
    with tempfile.TemporaryDirectory(prefix="rnnsweep-team-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = None
        try:
            server = start_mlflow_server(postgres.uri(), tmp / "server",
                                         cli_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
                                                  "false"}), workers=opts.server_workers)
            samples: dict[tuple[str, int], list[Sample]] = {}
            for repeat in range(opts.repeats):
                for n in opts.sizes:
                    for store in STORES:
                        experiment = f"bench-{store}-{n}-{repeat}"
                        uri = (f"sqlite:///{tmp}/{experiment}.db" if store == "sqlite"
                               else server.url)
                        sample = run_sweep(store, uri, experiment, n, tmp, opts.timeout,
                                           (server.process.pid, postgres.process.pid))
                        samples.setdefault((store, n), []).append(sample)
                        print(f"repeat {repeat + 1}: {store:<6} N={n:<5} wall "
                              f"{sample.wall_s:7.1f} s  recorded {sample.recorded}/{n}  "
                              f"nested {sample.nested}/{n}  parent {sample.parent_status}  "
                              f"server+PostgreSQL CPU {sample.server_cpu_s:6.1f} s",
                              flush=True)
        finally:
            if server is not None:
                server.stop()
            postgres.stop()

    print(f"\n{opts.repeats} repeat(s), whole CLI processes, medians")
    print(f"{'store':<8}{'N':>6}{'wall s':>10}{'s/trial':>10}{'all recorded':>14}")
    for (store, n), runs in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        wall = statistics.median(s.wall_s for s in runs)
        complete = all(s.recorded == s.nested == n and s.parent_status == "FINISHED"
                       for s in runs)
        print(f"{store:<8}{n:>6}{wall:>10.1f}{wall / n:>10.3f}{'yes' if complete else 'NO':>14}")
    sizes = sorted(opts.sizes)
    for small, big in zip(sizes, sizes[1:], strict=False):
        for store in STORES:
            marginal = [(b.wall_s - s.wall_s) / (big - small) for s, b in
                        zip(samples[(store, small)], samples[(store, big)], strict=True)]
            print(f"marginal cost per trial, {store:<6} N={small} -> {big}: "
                  f"{statistics.median(marginal):.3f} s (every repeat: "
                  f"{' '.join(f'{m:.3f}' for m in marginal)}; target <= 0.1 s)")
        # What the server side costs a trial in CPU, on the machine the trials share here.
        cpu = [(b.server_cpu_s - s.server_cpu_s) / (big - small) for s, b in
               zip(samples[("server", small)], samples[("server", big)], strict=True)]
        print(f"tracking server + PostgreSQL CPU per trial, N={small} -> {big}: "
              f"{statistics.median(cpu) * 1000:.0f} ms")


if __name__ == "__main__":
    main()

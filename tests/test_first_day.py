"""Issue 22: what a new user and an adversary tripped over on their first day.

The fast tests check the refusals through ``check_overrides`` (the CLI's own validation,
on the real ``conf/``) and the report's pieces; the slow ones run the real CLI, and the
Python API on real Ray and a real SQLite store.
"""

from __future__ import annotations

import re
import signal
import sys
import time

import pytest
from conftest import BASIC_LAUNCHER, REPO, TOY, run_cli, toy

from hydra_plugins.rnnsweep_launcher.rnnsweep_launcher import RnnsweepRayLauncherConf
from rnnsweep.config import bounds
from rnnsweep.config.command import parse
from rnnsweep.preflight.validation import ConfigError, check_overrides
from rnnsweep.sweep.resources import InfeasibleRequest, Node, check_feasible, plan

HELP = REPO / "conf" / "hydra" / "help" / "rnnsweep.yaml"
USER_MODEL = REPO / "examples" / "user_model"
CPU_NODE = [Node("n0", "127.0.0.1", 2.0, 0.0)]


def refused(*overrides: str, multirun: bool = False, command=None) -> str:
    with pytest.raises(ConfigError) as caught:
        check_overrides(list(overrides), multirun, command)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- 1: ready sweeps and the help text -----------------------------------------------------


def test_a_ready_sweep_without_multirun_is_refused_saying_add_m():
    """It ran one trial (batch=32) for a minute and said nothing."""
    message = refused("+sweep=batch_scaling", *TOY)
    assert message.startswith("+sweep=batch_scaling is a sweep (batch=1,8,32,128): add -m")


def test_a_ready_sweep_whose_swept_keys_are_all_given_runs_as_one_trial():
    checked = check_overrides(["+sweep=batch_scaling", "batch=8", *TOY], False)
    assert [t.batch for t in checked.trials] == [8]


def test_every_command_the_help_shows_for_a_ready_sweep_runs_that_sweep():
    """The help's ``python -m rnnsweep ...`` lines for ready sweeps expand, as validated,
    to the trials they promise."""
    template = HELP.read_text()
    shown = re.findall(r"python -m rnnsweep (.*\+sweep=batch_scaling)\s+\(= -m batch=([\d,]+)\)",
                       template)
    assert shown, "the help shows no runnable ready-sweep command"
    for command, batches in shown:
        args = command.split()
        assert "-m" in args
        checked = check_overrides([a for a in args if a != "-m"] + list(TOY), True)
        assert [t.batch for t in checked.trials] == [int(b) for b in batches.split(",")]


# --- 10: the batch-scaling sweep's objective -----------------------------------------------


def test_batch_scaling_judges_trials_per_sequence():
    base = check_overrides(["+sweep=batch_scaling", *TOY], True).base
    assert base.objective.metric == "latency_ms_per_seq"


# --- adversarial: keys nothing takes, names that are paths, huge grids, absent GPUs ---------


@pytest.mark.parametrize("override, key", [
    ("+model.extra=1", "model.extra"),
    ("+task.path=/etc/passwd", "task.path"),
    ("+precision.extra=1", "precision.extra"),
    ("+hardware.x._target_=os.system", "hardware.x"),
    ("+anything=1", "anything"),
])
def test_keys_nothing_takes_are_refused_up_front(override, key):
    assert refused(override, *TOY).startswith(f"{key}: unknown key; allowed")


def test_a_target_smuggled_into_a_builtin_model_is_refused_before_it_runs(tmp_path):
    """``+model.x._target_=builtins.open`` truncated the victim file inside the trial."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    message = refused("+model.x._target_=builtins.open", f"+model.x._args_=['{victim}',w]",
                      *TOY, multirun=True)
    assert message.startswith("model.x: unknown key")
    assert victim.read_text() == "keep me"


def test_a_mistyped_key_on_a_users_model_names_its_constructors_parameters(monkeypatch):
    monkeypatch.syspath_prepend(str(USER_MODEL))
    command = parse(["--config-dir", str(USER_MODEL / "conf")])
    for override in ("model.hiden_size=3", "+model.hiden_size=3"):
        message = refused("model=indrnn", override, *toy("seq_len=5"), command=command)
        assert "hidden_size, input_size, max_recurrent, num_layers" in message
        assert "cell" not in message and "recurrent_init_scale" not in message


@pytest.mark.parametrize("name", ["../../../escape", "/tmp/abs", "a/b", ".."])
def test_experiment_names_are_names_not_paths(name):
    assert refused(f"tracking.experiment={name}", *TOY).startswith(
        f"tracking.experiment={name}: must be a name, not a path")


def test_an_enormous_grid_is_refused_at_once_naming_its_size():
    started = time.monotonic()
    message = refused("batch=range(1,100000)", *TOY, multirun=True)
    assert time.monotonic() - started < 5
    assert "99,999 trials" in message and "hydra.launcher.max_trials=10,000" in message
    # A product is counted, not built: 810,000 trials.
    message = refused(*toy("batch=range(1,91)", "seed=range(0,90)", "seq_len=range(1,101)"),
                      multirun=True)
    assert "810,000 trials" in message


def test_max_trials_is_a_launcher_setting_with_the_documented_default():
    assert RnnsweepRayLauncherConf.max_trials == bounds.DEFAULT_MAX_TRIALS == 10_000
    assert "300 trials" in refused("batch=range(1,301)", "hydra.launcher.max_trials=100",
                                   *TOY, multirun=True)
    sizes: list[int] = []
    check_overrides(["batch=1,2,3", *TOY], True, on_size=sizes.append)
    assert sizes == [3]


@pytest.mark.skipif("torch" in sys.modules and __import__("torch").cuda.is_available(),
                    reason="this machine has a GPU")
@pytest.mark.parametrize("multirun", [False, True])
def test_gpus_asked_for_where_there_are_none_are_refused(multirun):
    """``-m hardware.num_gpus=2 batch=1`` ran on CPU and recorded num_gpus=0."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert refused("hardware.num_gpus=2", "batch=1", *TOY, multirun=multirun).startswith(
        "hardware.num_gpus=2: this machine has no CUDA device")
    assert refused("hardware=cpu", "hardware.num_gpus=1", *TOY).startswith(
        "hardware.num_gpus=1: hardware.device=cpu uses no GPU")


def test_a_ray_cluster_without_gpus_refuses_a_gpu_count_on_hardware_auto():
    from conftest import compose_cfg

    request = plan(compose_cfg(["hardware.num_gpus=2"]), CPU_NODE)
    assert (request.device, request.num_gpus) == ("cuda", 2.0)
    with pytest.raises(InfeasibleRequest, match="this cluster has no GPUs"):
        check_feasible({0: request}, CPU_NODE, {0: "batch=1"})


# --- 3: reports ----------------------------------------------------------------------------


def test_the_loss_axis_names_the_tasks_loss():
    from rnnsweep.report.model import Trial
    from rnnsweep.report.sections import loss_name

    def trial(task: str) -> Trial:
        return Trial(run_id="r", outcome="OK", reason="", params={"task.name": task},
                     metrics={}, device="cpu", tags={})

    assert loss_name([trial("char_lm")]) == "cross-entropy, nats per character"
    assert loss_name([trial("regression"), trial("adding")]) == "MSE"
    assert loss_name([trial("mine")]) == "the task's loss"
    assert loss_name([trial("char_lm"), trial("regression")]) == "each task's own loss"


def test_long_plot_titles_wrap_inside_the_figure():
    from rnnsweep.report.plots import TITLE_CHARS, TITLE_LINES, _wrapped

    title = "batch=1,8,32,128 model.input_size=8 " * 12 + "\non CPU AMD EPYC (2 threads)"
    lines = _wrapped(title).splitlines()
    assert len(lines) <= TITLE_LINES and max(map(len, lines)) <= TITLE_CHARS
    assert lines[-1] == "on CPU AMD EPYC (2 threads)"


def test_notes_read_as_sentences():
    from rnnsweep.report.model import Report, Trial
    from rnnsweep.report.sections import notes_section

    failed = [Trial(run_id=f"r{i}", outcome="FAILED", reason="boom", params={"batch": str(i)},
                    metrics={}, device="cpu", tags={}) for i in range(2)]
    report = Report(parent_run_id="p", sweep="s", device="cpu", axes=["batch"], trials=failed,
                    columns=[], rows=[])
    notes_section(report)
    assert report.notes[0] == "2 trials gave no numbers:"
    assert not any("were did" in n for n in report.notes)


# --- 9: noisy timings are not reused as if clean ---------------------------------------------


def test_noisy_finished_trials_are_not_reusable(mlflow_store):
    from rnnsweep.record import CONFIG_HASH_TAG
    from rnnsweep.tracking import FINGERPRINT_TAG, Tracker

    tracker = Tracker(mlflow_store.uri, "reuse")
    for digest, noisy in (("clean", "false"), ("noisy", "true")):
        run = tracker.start_run(digest, tags={CONFIG_HASH_TAG: digest, FINGERPRINT_TAG: "env",
                                              "rnnsweep.outcome": "OK",
                                              "rnnsweep.timing.noisy": noisy})
        tracker.client.set_terminated(run, "FINISHED")
    assert set(tracker.finished_configs()) == {("clean", "env")}
    assert set(tracker.noisy_finished) == {("noisy", "env")}


# --- 2, 6, 11: the CLI's version, the example script, the Python API ---------------------------


@pytest.mark.slow
def test_version_names_rnnsweep_and_what_it_runs_on(tmp_path):
    done = run_cli(["--version"], tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    for name in ("rnnsweep 0.1.0", "torch ", "Ray ", "MLflow ", "Hydra ", "CUDA "):
        assert name in line


def test_the_user_model_example_does_not_call_a_bare_python():
    script = (USER_MODEL / "sweep.sh").read_text()
    assert not re.search(r"(^|exec |\s)python\s+-m", script, re.MULTILINE)


def test_import_rnnsweep_is_cheap_and_shows_the_api():
    import subprocess

    code = ("import sys, rnnsweep; heavy = [m for m in ('torch', 'ray', 'mlflow', 'hydra', "
            "'pandas') if m in sys.modules]; print(heavy, sorted(n for n in dir(rnnsweep) "
            "if not n.startswith('_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60, check=True).stdout
    assert out.startswith("[] ")
    for name in ("load", "sweep", "versions", "ConfigError", "SweepFailed"):
        assert f"'{name}'" in out


@pytest.mark.slow
def test_python_api_sweeps_twice_in_one_process_and_loads(tmp_path, monkeypatch):
    """Real Ray, a real SQLite store; nothing of the first sweep leaks into the second."""
    import ray

    import rnnsweep

    monkeypatch.chdir(tmp_path)
    args = [*toy("workload=train"), "hardware.num_cpus=1", "hydra.launcher.num_cpus=2",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = list(sys.argv)
    first, trials = rnnsweep.sweep(["batch=1,4", *args])
    assert sorted(trials["batch"]) == [1, 4] and set(trials["outcome"]) == {"OK"}
    assert not ray.is_initialized()
    assert {s: signal.getsignal(s) for s in handlers} == handlers and sys.argv == argv
    second, again = rnnsweep.sweep(["batch=2,8", *args])
    assert second != first and sorted(again["batch"]) == [2, 8]
    assert not ray.is_initialized()
    loaded_id, loaded = rnnsweep.load(first)
    assert loaded_id == first
    assert sorted(loaded["run_id"]) == sorted(trials["run_id"])
    with pytest.raises(rnnsweep.ConfigError, match="batch=0: must be an integer >= 1"):
        rnnsweep.sweep(["batch=0,1", *args])
    with pytest.raises(rnnsweep.SweepFailed) as failed:
        rnnsweep.sweep(["batch=1,2", "guard.raise_at_step=0", *args])
    assert set(failed.value.result.trials["outcome"]) == {"FAILED"}
    with pytest.raises(rnnsweep.ConfigError, match="no run"):
        rnnsweep.load("0" * 32)
    assert (tmp_path / "mlflow.db").is_file()


@pytest.mark.slow
def test_a_ready_sweep_without_m_exits_2_in_one_line(tmp_path):
    done = run_cli(["+sweep=batch_scaling", BASIC_LAUNCHER, *TOY], tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "add -m" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_report_html_table_fits_a_narrow_viewer_in_a_real_browser(tmp_path):
    """The table ran off the right edge of MLflow's artifact viewer (1955 px of table in
    an 884 px frame before; the frame is measured by headless Chromium)."""
    import shutil
    import subprocess

    from rnnsweep.report import render
    from rnnsweep.report.model import Report

    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    columns = ["run", "batch", "latency_ms", "latency_ms_per_seq", "throughput_seq_per_s",
               "step_time_ms", "final_loss", "nonfinite_steps", "max_grad_norm",
               "peak_mem_mb", "timing", "outcome"]
    rows = [[f"abcdef{i:02d}", str(b), "12.34 ±0.567", "0.4321", "2,317", "45.67", "0.1667",
             "0", "3.456", "123.4", "noisy", "OK"] for i, b in enumerate([1, 8, 32, 128])]
    rows[1][-1] = "FAILED: RuntimeError: the trial raised at step 0 (guard.raise_at_step)"
    report = Report(parent_run_id="p" * 32, sweep="batch_scaling", device="CPU (2 threads)",
                    axes=["batch"], trials=[], columns=columns, rows=rows)
    (tmp_path / "report.html").write_text(render.html(report))
    (tmp_path / "frame.html").write_text(
        '<html><body style="margin:0"><iframe id=f src="report.html" '
        'style="width:900px;height:800px;border:0"></iframe><script>'
        "document.getElementById('f').onload=function(){var t=this.contentDocument"
        ".querySelector('.scroll');document.body.setAttribute('data-fit',"
        "t.scrollWidth+'/'+t.clientWidth);}</script></body></html>")
    dom = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1000,900", "--virtual-time-budget=5000", "--dump-dom",
         (tmp_path / "frame.html").as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    fit = re.search(r'data-fit="(\d+)/(\d+)"', dom)
    assert fit, dom[-2000:]
    assert int(fit.group(1)) <= int(fit.group(2))


def test_report_markdown_names_its_plots_instead_of_broken_image_links():
    from rnnsweep.report import render
    from rnnsweep.report.model import Report

    report = Report(parent_run_id="p", sweep="s", device="cpu", axes=[], trials=[],
                    columns=["run"], rows=[], plots={"plots/batch_scaling.png": b""})
    text = render.markdown(report)
    assert "![" not in text and "- plots/batch_scaling.png" in text

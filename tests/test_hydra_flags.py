"""Hydra's command line, as Hydra defines it, one test per flag (the CLI in a subprocess).

Each flag once was broken: rnnsweep split ``sys.argv`` by hand, took a flag's value for
an override, and validated without the user's search path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOY, cli_paths, run_cli

import rnnsweep.config
from rnnsweep.config.command import CommandError, parse

MY_GRU = "defaults:\n  - /builtin_model_schema@_here_\n  - _self_\ncell: gru\nhidden_size: 24\n"
SINGLE = [*TOY, "hydra/launcher=basic", "workload=train", "hardware.num_cpus=1"]
SINGLE = [o for o in SINGLE if not o.startswith("model.hidden_size")]


@pytest.fixture
def myconf(tmp_path) -> Path:
    """A user's config directory with a model option of its own."""
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "my_gru.yaml").write_text(MY_GRU)
    return tmp_path / "myconf"


def only_run(store):
    (run,) = store.runs()
    return run


def ok(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def one_line_refusal(result, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("form", [["--config-dir", "{d}"], ["--config-dir={d}"], ["-cd", "{d}"]])
def test_config_dir(form, myconf, mlflow_store, tmp_path):
    flag = [part.format(d=myconf) for part in form]
    result = run_cli([*flag, "model=my_gru", *SINGLE, *cli_paths(mlflow_store, tmp_path)],
                     cwd=tmp_path)
    ok(result)
    params = only_run(mlflow_store).data.params
    assert (params["model.cell"], params["model.hidden_size"]) == ("gru", "24")


@pytest.mark.slow
def test_config_dir_options_are_validated_up_front(myconf, mlflow_store, tmp_path):
    result = run_cli(["-cd", str(myconf), "model=nope", *SINGLE,
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    one_line_refusal(result, "model=nope", "my_gru", "lstm")
    assert mlflow_store.runs() == []
    result = run_cli(["--config-dir", str(tmp_path / "missing"), *SINGLE], cwd=tmp_path)
    one_line_refusal(result, "--config-dir", "missing")


@pytest.mark.slow
def test_config_name(myconf, mlflow_store, tmp_path):
    """A primary config of the user's own, built on rnnsweep's ``config``."""
    (myconf / "my_experiment.yaml").write_text(
        "defaults:\n  - config\n  - override model: my_gru\n  - _self_\n\nbatch: 3\n")
    result = run_cli(["-cd", str(myconf), "--config-name", "my_experiment", *SINGLE,
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    ok(result)
    params = only_run(mlflow_store).data.params
    assert (params["batch"], params["model.cell"], params["model.hidden_size"]) == \
        ("3", "gru", "24")
    result = run_cli(["-cn", "no_such_config", *SINGLE], cwd=tmp_path)
    one_line_refusal(result, "no_such_config")


@pytest.mark.slow
def test_config_path(mlflow_store, tmp_path):
    """--config-path replaces rnnsweep's conf/; a relative one is taken from the cwd."""
    shutil.copytree(rnnsweep.config.conf_dir(), tmp_path / "conf_copy")
    (tmp_path / "conf_copy" / "model" / "my_gru.yaml").write_text(MY_GRU)
    result = run_cli(["--config-path", "conf_copy", "model=my_gru", *SINGLE,
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    ok(result)
    assert only_run(mlflow_store).data.params["model.hidden_size"] == "24"


@pytest.mark.slow
def test_hydra_searchpath(myconf, mlflow_store, tmp_path):
    result = run_cli([f"hydra.searchpath=[file://{myconf}]", "model=my_gru", *SINGLE,
                      *cli_paths(mlflow_store, tmp_path)], cwd=tmp_path)
    ok(result)
    assert only_run(mlflow_store).data.params["model.cell"] == "gru"


@pytest.mark.slow
def test_cfg_shows_the_config_and_runs_nothing(myconf, tmp_path):
    result = run_cli(["--cfg", "job", "-cd", str(myconf), "model=my_gru", "batch=7"],
                     cwd=tmp_path)
    ok(result)
    assert "hidden_size: 24" in result.stdout and "batch: 7" in result.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_info_shows_the_users_search_path(myconf, tmp_path):
    result = run_cli(["--info", "searchpath", "--config-dir", str(myconf)], cwd=tmp_path)
    ok(result)
    assert f"file://{myconf}" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_shell_completion(myconf, tmp_path):
    bare = run_cli(["--shell-completion"], cwd=tmp_path)
    one_line_refusal(bare, "--shell-completion", "install=")
    install = run_cli(["-sc", "install=bash"], cwd=tmp_path)
    ok(install)
    assert "complete" in install.stdout and "hydra_bash_completion" in install.stdout
    # The query is what the installed completion calls as the user types.
    script = Path(sys.executable).with_name("rnnsweep")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["COMP_LINE"] = "rnnsweep model="
    query = subprocess.run([str(script), "-sc", "query=bash", "-cd", str(myconf)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120, check=False)
    assert query.returncode == 0, query.stderr
    assert {"model=lstm", "model=gru", "model=rnn", "model=my_gru"} <= set(query.stdout.split())


@pytest.mark.slow
def test_help_is_rnnsweeps_own_page(myconf, tmp_path):
    result = run_cli(["--help", "--config-dir", str(myconf)], cwd=tmp_path)
    ok(result)
    page = result.stdout
    assert page.startswith("rnnsweep:")
    # The groups with their options, the user's included.
    assert "model: gru, lstm, my_gru, rnn" in page
    assert "task: adding, char_lm, regression" in page
    # Every ready sweep, with the + syntax that it needs.
    for name in ("batch_scaling", "fused_vs_loop", "precision", "clipping", "deployment",
                 "seq_len_scaling"):
        assert name in page
    assert "+sweep=NAME" in page and "+sweep=batch_scaling" in page
    # How to add a model and a config directory; the objective; Hydra's flags.
    for words in ("_target_", "--config-dir myconf", "objective.metric", "--config-name",
                  "hydra/sweeper=rnnsweep_optuna", "hydra.launcher.stopper=asha"):
        assert words in page
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_overrides_before_and_after_the_multirun_flag(mlflow_store, tmp_path):
    result = run_cli([*SINGLE, "-m", "seed=0,1", *cli_paths(mlflow_store, tmp_path)],
                     cwd=tmp_path)
    ok(result)
    assert sorted(r.data.params["seed"] for r in mlflow_store.runs()
                  if "seed" in r.data.params) == ["0", "1"]



# --- the parser itself (no subprocess) ------------------------------------------------------


def test_parse_is_hydras_parser_with_overrides_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myconf").mkdir()
    command = parse(["batch=1", "-m", "seed=0,1", "-cd", "myconf", "-cn", "other"])
    assert command.multirun and command.runs_trials
    assert command.overrides == ["batch=1", "seed=0,1"]
    assert command.args.config_dir == str(tmp_path / "myconf")  # taken from the cwd
    assert command.config_name == "other"
    assert f"file://{tmp_path / 'myconf'}" in str(command.search_path())
    for shows in (["--help"], ["--cfg", "job"], ["--info"], ["-sc", "install=bash"],
                  ["--hydra-help"]):
        assert not parse(shows).runs_trials


@pytest.mark.parametrize("argv, words", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-m", "--cfg", "job"], "only one of"),
    (["--resolve"], "--resolve goes with --cfg"),
    (["--shell-completion"], "install=SHELL"),
    (["--config-dir", "/no/such/dir"], "--config-dir=/no/such/dir: no such directory"),
    (["--config-path", "/no/such/dir"], "--config-path=/no/such/dir: no such directory"),
    (["--cfg", "everything"], "invalid choice"),
])
def test_parse_errors_are_one_line(argv, words):
    with pytest.raises(CommandError) as err:
        parse(argv)
    assert words in str(err.value) and "\n" not in str(err.value)

"""Every private Hydra and Ray access rnnsweep makes (all of them in ``rnnsweep/adapters/``),
checked against the installed libraries: a release that drops or reshapes one fails here,
with the installed version, what changed and the adapter to update, rather than somewhere
in a sweep. Then what each adapter function does, on the real libraries."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from rnnsweep import logs
from rnnsweep.adapters import hydra_private, ray_private
from rnnsweep.config.schema import conf_dir

HYDRA = ("hydra", "hydra-core", "rnnsweep/adapters/hydra_private.py")
RAY = ("ray", "ray", "rnnsweep/adapters/ray_private.py")


@dataclasses.dataclass(frozen=True)
class Access:
    """``module`` then ``attribute`` (dotted), which rnnsweep calls with ``params``."""

    library: tuple[str, str, str]
    module: str
    attribute: str = ""
    params: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return ".".join(p for p in (self.module, self.attribute) if p)


ACCESSES = [
    Access(HYDRA, "hydra._internal.utils", "get_args_parser"),
    Access(HYDRA, "hydra._internal.utils", "create_automatic_config_search_path",
           ("calling_file", "calling_module", "config_path")),
    Access(HYDRA, "hydra._internal.utils", "detect_task_name",
           ("calling_file", "calling_module")),
    Access(HYDRA, "hydra._internal.utils", "_run_hydra",
           ("args", "args_parser", "task_function", "config_path", "config_name")),
    Access(HYDRA, "hydra.main", "_get_rerun_conf", ("file_path", "overrides")),
    Access(HYDRA, "hydra._internal.hydra", "Hydra.create_main_hydra2",
           ("task_name", "config_search_path")),
    Access(HYDRA, "hydra._internal.core_plugins.basic_sweeper", "BasicSweeper.split_arguments",
           ("overrides", "max_batch_size")),
    Access(HYDRA, "hydra._internal.core_plugins.basic_sweeper", "BasicSweeperConf"),
    Access(HYDRA, "hydra._internal.config_loader_impl",
           "ConfigLoaderImpl._apply_overrides_to_config", ("overrides", "cfg")),
    Access(HYDRA, "hydra._internal.config_loader_impl", "get_overrides_dirname",
           ("overrides", "kv_sep", "item_sep", "exclude_keys")),
    Access(HYDRA, "hydra.core.utils", "_check_hydra_context", ("hydra_context",)),
    Access(HYDRA, "hydra.core.utils", "_flush_loggers"),
    Access(HYDRA, "hydra._internal.deprecation_warning", "deprecation_warning",
           ("message", "stacklevel")),
    Access(HYDRA, "omegaconf._utils", "get_omega_conf_dumper"),
    Access(RAY, "ray._raylet", "setproctitle"),
    Access(RAY, "ray._raylet", "GcsClient"),
]


def found(access: Access) -> Any:
    """The thing ``access`` names, as installed; fails naming the version and what changed."""
    _, distribution, adapter = access.library
    where = f"{access.library[0]} {metadata.version(distribution)}"
    fix = f"{adapter} needs updating"
    try:
        thing = importlib.import_module(access.module)
    except ImportError as exc:
        pytest.fail(f"{where}: module {access.module} is gone ({exc}); {fix}")
    path = access.module
    for part in filter(None, access.attribute.split(".")):
        path += f".{part}"
        if not hasattr(thing, part):
            pytest.fail(f"{where}: {path} is gone; {fix}")
        thing = getattr(thing, part)
    if access.params:
        taken = set(inspect.signature(thing).parameters)
        missing = [p for p in access.params if p not in taken]
        if missing:
            pytest.fail(f"{where}: {path} no longer takes {', '.join(missing)} "
                        f"(it takes {', '.join(taken) or 'nothing'}); {fix}")
    return thing


@pytest.mark.parametrize("access", ACCESSES, ids=lambda a: a.name)
def test_each_private_access_is_still_there(access):
    assert found(access) is not None


def test_an_access_that_changed_names_the_version_and_the_adapter():
    """The check itself can fail, and says what to do."""
    gone = Access(HYDRA, "hydra._internal.utils", "run_and_report_gone")
    with pytest.raises(pytest.fail.Exception, match=(
            rf"hydra {metadata.version('hydra-core')}: hydra\._internal\.utils\."
            r"run_and_report_gone is gone; rnnsweep/adapters/hydra_private\.py needs updating")):
        found(gone)
    reshaped = Access(RAY, "ray._raylet", "setproctitle", ("title", "nice"))
    with pytest.raises(pytest.fail.Exception, match=r"ray .*: ray\._raylet\.setproctitle "
                                                    r"no longer takes nice \(it takes title\)"):
        found(reshaped)
    with pytest.raises(pytest.fail.Exception, match=r"module ray\._gone is gone"):
        found(Access(RAY, "ray._gone"))


def test_job_return_keeps_its_value_in_return_value_():
    fields = {f.name for f in dataclasses.fields(JobReturn)}
    assert "_return_value" in fields, (
        f"hydra {metadata.version('hydra-core')}: hydra.core.utils.JobReturn has no "
        f"_return_value field (fields: {', '.join(sorted(fields))}); "
        f"{HYDRA[2]} (job_value) needs updating")


def test_hydras_parser_has_the_options_rnnsweep_documents():
    parser = found(Access(HYDRA, "hydra._internal.utils", "get_args_parser"))()
    options = {o for action in getattr(parser, "_actions", []) for o in action.option_strings}
    assert "--config-path" in options, (
        f"hydra {metadata.version('hydra-core')}: Hydra's parser lists no --config-path "
        f"in argparse's _actions; {HYDRA[2]} (args_parser) needs updating")


def test_ray_init_still_takes_a_temp_dir():
    import ray

    init = ray.init
    takes = "_temp_dir" in inspect.signature(init).parameters or \
        '"_temp_dir"' in inspect.getsource(init)
    assert takes, (f"ray {metadata.version('ray')}: ray.init no longer reads _temp_dir; "
                   f"{RAY[2]} (temp_dir_option) needs updating")


def test_the_ray_logger_rnnsweep_quiets_still_exists():
    """rnnsweep.logs drops a chatty line from a logger named after one of Ray's private
    modules: a logger that no longer exists would let it through, silently."""
    names = [name for name, _ in logs._CHATTER if name.startswith("ray.")]
    assert names
    for name in names:
        assert importlib.util.find_spec(name) is not None, (
            f"ray {metadata.version('ray')}: module {name} is gone; the logger name in "
            "rnnsweep/logs.py needs updating")


# What each adapter function does, on the real Hydra.

def test_args_parser_is_hydras_with_the_help_replaced():
    parser = hydra_private.args_parser({"--config-path": "rnnsweep's help"})
    args = parser.parse_args(["--config-path", "/x", "-m", "a=1"])
    assert (args.config_path, args.multirun, args.overrides) == ("/x", True, ["a=1"])
    helps = {o: a.help for a in parser._actions for o in a.option_strings}
    assert helps["--config-path"] == "rnnsweep's help"
    assert helps["--config-name"] != "rnnsweep's help"
    assert isinstance(parser, argparse.ArgumentParser)


def test_search_path_and_task_name_are_hydras():
    path = hydra_private.search_path(str(conf_dir()), "rnnsweep.sweep.job")
    assert ("main", str(conf_dir())) in [(e.provider, e.path) for e in path.get_path()]
    assert hydra_private.task_name("rnnsweep.sweep.job") == "job"


def test_start_initialises_hydra_on_the_search_path():
    from hydra import compose

    GlobalHydra.instance().clear()
    try:
        hydra_private.start("job", hydra_private.search_path(str(conf_dir()), "x.job"))
        assert GlobalHydra.instance().is_initialized()
        assert "model" in compose("config")
    finally:
        GlobalHydra.instance().clear()


def test_split_sweep_expands_as_the_basic_sweeper():
    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x"])
    assert hydra_private.split_sweep(parsed) == [["a=1", "b=x"], ["a=2", "b=x"]]


def test_apply_overrides_and_the_dirname():
    parsed = OverridesParser.create().parse_overrides(["a=2", "b.c=[1,2]"])
    config = OmegaConf.create({"a": 1, "b": {"c": []}})
    hydra_private.apply_overrides(parsed, config)
    assert OmegaConf.to_container(config) == {"a": 2, "b": {"c": [1, 2]}}
    assert hydra_private.overrides_dirname(parsed, kv_sep="=", item_sep=",",
                                           exclude_keys=["b.c"]) == "a=2"


def test_job_value_reads_a_failed_jobs_error_without_raising(capsys):
    failed = JobReturn(status=JobStatus.FAILED)
    failed.return_value = error = RuntimeError("boom")
    assert hydra_private.job_value(failed) is error
    assert capsys.readouterr().err == ""
    with pytest.raises(RuntimeError):  # the public property raises it instead
        failed.return_value  # noqa: B018


def test_the_shims_sweeper_builds_after_hydras_plugin_scan():
    """Hydra's plugin scan executes its core plugins' modules again, after rnnsweep's CLI
    imported the adapter: the shim's sweeper must extend the basic sweeper of that later
    run, which names itself in its ``super()`` call."""
    script = (
        "import importlib\n"
        "import rnnsweep.adapters.hydra_private\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "Plugins.instance()\n"  # the scan, as a Hydra run starts
        "shim = importlib.import_module('hydra_plugins.rnnsweep_launcher.rnnsweep_launcher')\n"
        "assert isinstance(shim.RnnsweepSweeper(max_batch_size=None), Sweeper)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_temp_dir_option_is_ray_inits_keyword():
    assert ray_private.temp_dir_option("/somewhere") == {"_temp_dir": "/somewhere"}


# Hydra's ``run_job`` that ``hydra_private.run_job`` follows step for step: its source's
# digest, so that a Hydra release that changes the steps fails here, not in a sweep.
RUN_JOB_SHA256 = "398b33286c017043"


def test_the_run_job_followed_is_the_installed_hydras():
    import hashlib

    from hydra.core import utils

    digest = hashlib.sha256(inspect.getsource(utils.run_job).encode()).hexdigest()[:16]
    assert digest == RUN_JOB_SHA256, (
        f"hydra {metadata.version('hydra-core')} changed hydra.core.utils.run_job: "
        f"bring rnnsweep/adapters/hydra_private.run_job in line with it, then set "
        f"RUN_JOB_SHA256 = {digest!r}")


def _job(tmp_path, sweep_dir: str, subdir: str = "3"):
    """A sweep's job 3 as a worker gets it, with its Hydra context."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext
    from omegaconf import open_dict

    setup_globals()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        config = compose("config", overrides=["hydra/launcher=basic", "batch=3"],
                         return_hydra_config=True)
    with open_dict(config):
        config.hydra.sweep.dir = str(tmp_path / sweep_dir)
        config.hydra.sweep.subdir = subdir
        config.hydra.job.id = config.hydra.job.num = 3
        config.hydra.overrides.task = ["batch=3"]
    GlobalHydra.instance().clear()
    return config, HydraContext(config_loader=None, callbacks=Callbacks(config))


# The job's directory as a number, an interpolation of the job's own config, and through
# the ``hydra:`` resolver, which reads the HydraConfig set for the job.
SUBDIRS = {"3": "3", "interpolation": "${hydra.job.num}", "resolver": "b${hydra:job.num}"}


@pytest.mark.parametrize("subdir", sorted(SUBDIRS))
def test_run_job_does_what_hydras_does(tmp_path, subdir):
    """The same job through Hydra's ``run_job`` and rnnsweep's: the same task config, the
    same result, the same ``.hydra/`` files (as data) and job log, in its own directory,
    and the same Hydra config on the job's return."""
    import yaml
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job

    seen = {}

    def task(cfg):
        seen.setdefault("dirs", []).append(HydraConfig.get().runtime.output_dir)
        return cfg.batch * 2

    results = {}
    for name, runner in (("by-hydra", run_job), ("by-adapter", hydra_private.run_job)):
        config, context = _job(tmp_path, name, SUBDIRS[subdir])
        results[name] = runner(task_function=task, config=config,
                               job_dir_key="hydra.sweep.dir",
                               job_subdir_key="hydra.sweep.subdir", hydra_context=context)
    ours, theirs = results["by-adapter"], results["by-hydra"]
    assert ours.status == theirs.status == JobStatus.COMPLETED
    assert ours.return_value == theirs.return_value == 6
    assert ours.overrides == theirs.overrides == ["batch=3"]
    assert ours.working_dir == theirs.working_dir
    assert ours.task_name == theirs.task_name
    assert OmegaConf.to_container(ours.cfg) == OmegaConf.to_container(theirs.cfg)
    assert "hydra" not in ours.cfg
    assert (OmegaConf.to_yaml(ours.hydra_cfg).replace("by-adapter", "<sweep>")
            == OmegaConf.to_yaml(theirs.hydra_cfg).replace("by-hydra", "<sweep>"))
    # The job's own directory, seen from inside the task, as Hydra sets it.
    job_dir = "b3" if subdir == "resolver" else "3"
    assert seen["dirs"] == [str(tmp_path / "by-hydra" / job_dir),
                            str(tmp_path / "by-adapter" / job_dir)]

    def files(name):
        job = tmp_path / name / job_dir
        found = {f.name: yaml.safe_load(f.read_text().replace(name, "<sweep>"))
                 for f in (job / ".hydra").iterdir()}
        return found, sorted(f.name for f in job.glob("*.log"))

    assert files("by-adapter") == files("by-hydra")
    assert set(files("by-adapter")[0]) == {"config.yaml", "hydra.yaml", "overrides.yaml"}


def test_a_failed_job_is_a_failed_return_as_in_hydra(tmp_path):
    config, context = _job(tmp_path, "failing")

    def task(cfg):
        raise ValueError("the trial's own error")

    ret = hydra_private.run_job(task_function=task, config=config,
                                job_dir_key="hydra.sweep.dir",
                                job_subdir_key="hydra.sweep.subdir", hydra_context=context)
    assert ret.status == JobStatus.FAILED
    assert isinstance(hydra_private.job_value(ret), ValueError)


def test_fresh_copy_and_to_yaml_are_deepcopy_and_omegaconfs(tmp_path):
    import copy

    import yaml

    config, _ = _job(tmp_path, "copies")
    copied = hydra_private.fresh_copy(config)
    assert copied is not config and copied.hydra is not config.hydra
    assert OmegaConf.to_yaml(copied) == OmegaConf.to_yaml(copy.deepcopy(config))
    assert OmegaConf.is_struct(copied) and copied._get_parent() is None
    assert copied.hydra._get_parent() is copied
    copied.batch = 99  # a copy: the original keeps its value
    assert config.batch == 3
    # The same data as OmegaConf's YAML, strings that read as numbers quoted alike.
    assert yaml.safe_load(hydra_private.to_yaml(config)) == \
        yaml.safe_load(OmegaConf.to_yaml(config))
    quoted = OmegaConf.create({"a": "1", "b": "true", "c": "1.5", "d": "x", "e": 1})
    assert hydra_private.to_yaml(quoted) == OmegaConf.to_yaml(quoted)

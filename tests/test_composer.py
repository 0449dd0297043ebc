"""The launcher's shared composition gives each job exactly the config Hydra would."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

import rnnsweep.config
import rnnsweep.config.sweeps
from rnnsweep.sweep.composer import Composer


@pytest.fixture
def loader_and_master():
    rnnsweep.config.register()
    rnnsweep.config.sweeps.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(rnnsweep.config.conf_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", ["hydra/launcher=basic", "steps=2"],
                                           run_mode=RunMode.MULTIRUN)
        yield loader, master
    GlobalHydra.instance().clear()


def comparable(config):
    return OmegaConf.to_container(config, resolve=False)


@pytest.mark.parametrize("overrides", [
    ["seed=3"],
    ["seed=4", "batch=8"],
    ["model=gru", "batch=8"],  # a group choice and a value
    ["+sweep=batch_scaling", "batch=1"],
    ["model=rnn", "model.hidden_size=32", "precision=bf16"],
    ["batch=8", "model=gru"],  # order kept in the recorded overrides
])
def test_shared_composition_equals_hydras_own(loader_and_master, overrides):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    composer.compose(["seed=99"])  # something shared is already there
    mine = composer.compose(list(overrides))
    hydras = loader.load_sweep_config(master, list(overrides))
    assert comparable(mine) == comparable(hydras)
    assert list(mine.hydra.overrides.task) == overrides


def test_jobs_do_not_share_state(loader_and_master):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    first, second = composer.compose(["seed=1"]), composer.compose(["seed=2"])
    assert (first.seed, second.seed) == (1, 2)
    assert first.hydra.job.override_dirname == "seed=1"


def test_trials_composed_through_the_compose_api_equal_hydras_own():
    from hydra import compose

    from rnnsweep.sweep.composer import compose_trials

    trials = [["seed=1"], ["seed=2", "batch=8"], ["model=gru", "seed=3"], ["model=gru"]]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(rnnsweep.config.conf_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        mine = list(compose_trials(trials, lambda o: compose("config", overrides=o), loader))
        hydras = [compose("config", overrides=t) for t in trials]
    GlobalHydra.instance().clear()
    assert [comparable(c) for c in mine] == [comparable(c) for c in hydras]


@pytest.mark.parametrize("overrides", [["seed=3"], ["model=gru", "precision=bf16"],
                                       ["+sweep=fused_vs_loop"]])
def test_launcher_params_equal_the_trials_own_flattening(loader_and_master, overrides):
    """The launcher's params decide resume (their hash) and go on the run at submission;
    they must be exactly what the trial records for its own config."""
    import copy

    from omegaconf import open_dict

    from rnnsweep.record import flatten
    from rnnsweep.sweep.launcher import _params

    loader, master = loader_and_master
    config = loader.load_sweep_config(master, overrides)
    trial = copy.deepcopy(config)
    with open_dict(trial):
        del trial["hydra"]
    expected = flatten(OmegaConf.to_container(trial, resolve=True, enum_to_str=True))
    assert _params(config) == expected


@pytest.mark.parametrize("overrides", [["seed=3"], ["model=gru", "batch=8"], ["model=gru"]])
def test_a_jobs_trial_keys_alone_flatten_as_the_whole_job(loader_and_master, overrides):
    """The launcher plans each job (its request, params and config hash) from its
    trial keys without the ``hydra`` node, then composes it whole to submit it: both must
    say the same of the trial."""
    from rnnsweep.sweep.launcher import _params

    loader, master = loader_and_master
    composer = Composer(loader, master)
    trial_only, whole = composer.compose(overrides, hydra=False), composer.compose(overrides)
    assert "hydra" in whole
    assert ("hydra" in trial_only) == (overrides == ["model=gru"])  # composed from scratch
    assert _params(trial_only) == _params(whole)
    assert comparable(OmegaConf.masked_copy(whole, [k for k in whole if k != "hydra"])) \
        == comparable(OmegaConf.masked_copy(trial_only, [k for k in trial_only if k != "hydra"]))


def test_a_job_sent_as_its_values_is_the_job_the_driver_would_compose(loader_and_master):
    """What a worker builds from the shared composition and a pickled patch is the config
    the driver would have composed and sent whole."""
    import pickle

    from rnnsweep.sweep.composer import apply, job_config

    loader, master = loader_and_master
    sweep_dir = str(master.hydra.sweep.dir)  # as the launcher resolves it, before any job
    composer = Composer(loader, master)
    overrides = ["model=gru", "seed=7", "batch=8"]
    hardware = {"device": "cpu", "num_cpus": 1, "num_gpus": 0, "exclusive": True}
    patch = pickle.loads(pickle.dumps(composer.patch(overrides)))  # as Ray ships it
    base = pickle.loads(pickle.dumps(composer.base(patch.key)))
    on_worker = job_config(apply(base, patch), 3, hardware)
    on_driver = job_config(composer.compose(overrides), 3, hardware)
    assert comparable(on_worker) == comparable(on_driver)
    assert (on_worker.seed, on_worker.batch, on_worker.hardware.num_cpus) == (7, 8, 1)
    # The pickled composition carries the driver's resolver cache: same ${now:}, same pid.
    assert on_worker.hydra.job.num == 3
    assert on_worker.hydra.sweep.dir == sweep_dir
    assert composer.patch(["model=gru"]) is None  # nothing plain to share: composed whole


def test_each_job_sent_as_its_values_gets_its_own_sweep_directory():
    """A sweep directory that names the job's own values resolves with them, on the
    worker as on the driver."""
    from rnnsweep.sweep.composer import apply, job_config

    rnnsweep.config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(rnnsweep.config.conf_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "config", ["hydra/launcher=basic", "hydra.sweep.dir=out/b${batch}"],
            run_mode=RunMode.MULTIRUN)
        composer = Composer(loader, master)
        dirs = []
        for batch in (8, 16):
            patch = composer.patch([f"batch={batch}"])
            dirs.append(job_config(apply(composer.base(patch.key), patch), batch, None)
                        .hydra.sweep.dir)
    GlobalHydra.instance().clear()
    assert dirs == ["out/b8", "out/b16"]


def test_each_line_is_parsed_once_and_as_hydra_parses_it(loader_and_master, monkeypatch):
    """A thousand seeds share every line but one: the lines they share are parsed (and
    judged plain or not) once, and each parses as Hydra's parser parses it alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from rnnsweep.sweep import composer
    from rnnsweep.sweep.composer import Lines

    loader, _ = loader_and_master
    lines = Lines(loader)
    parsed_lines: list[str] = []
    real = OverridesParser.parse_overrides
    monkeypatch.setattr(OverridesParser, "parse_overrides",
                        lambda self, o: parsed_lines.extend(o) or real(self, o))
    judged: list[str] = []
    real_plain = composer.is_plain_value
    monkeypatch.setattr(composer, "is_plain_value",
                        lambda o, loader: judged.append(o.input_line) or real_plain(o, loader))
    for seed in range(3):
        key, values, parsed = lines.split(["model=gru", "batch=8", f"seed={seed}"])
        assert key == ("model=gru",)
        assert [v.input_line for v in values] == ["batch=8", f"seed={seed}"]
        assert parsed == real(OverridesParser.create(),
                              ["model=gru", "batch=8", f"seed={seed}"])
    assert parsed_lines.count("batch=8") == 1 and parsed_lines.count("model=gru") == 1
    assert sorted(judged) == ["batch=8", "model=gru", "seed=0", "seed=1", "seed=2"]
    with pytest.raises(OverrideParseException):
        lines.parse(["batch=[1,"])

"""Every ready sweep in sweeps/ composes, trial by trial, into what its experiment says."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from rnnsweep import config
from rnnsweep.config import sweeps
from rnnsweep.preflight.validation import check_overrides

config.register()
NAMES = sweeps.register()


def test_every_experiment_has_a_ready_sweep():
    assert set(NAMES) == {"batch_scaling", "fused_vs_loop", "precision", "clipping",
                          "seq_len_scaling", "deployment"}


@pytest.mark.parametrize("name", NAMES)
def test_sweep_composes_and_every_trial_passes_validation(name):
    base = check_overrides([f"+sweep={name}"], multirun=True).base
    assert base.hydra.sweeper.params, f"{name} declares no sweep axes"


EXPECTED = {
    "batch_scaling": ({"model.cell": "lstm", "model.input_size": 128, "model.hidden_size": 256,
                       "seq_len": 100, "workload.bench": True}, {"batch": "1,8,32,128"}),
    "fused_vs_loop": ({"model.input_size": 256, "model.hidden_size": 512, "seq_len": 200,
                       "batch": 64, "workload.compare_impl": True}, {"model": "lstm,gru,rnn"}),
    "precision": ({"model.num_layers": 2, "model.input_size": 256, "model.hidden_size": 512,
                   "batch": 32, "seq_len": 100, "task.optimizer": "adam",
                   "hardware.exclusive": True}, {"precision": "fp32,fp16,bf16"}),
    "clipping": ({"model.cell": "rnn", "model.input_size": 64, "model.hidden_size": 128,
                  "batch": 16, "seq_len": 50, "model.recurrent_init_scale": 3.0,
                  "task.optimizer": "sgd", "task.lr": 0.2},
                 {"clipping.max_norm": "null,1.0,5.0"}),
    "seq_len_scaling": ({"model.cell": "lstm"}, {"seq_len": "25,50,100,200,400"}),
    "deployment": ({"workload.deploy": True}, {"model": "lstm,gru,rnn"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sweep_sets_its_experiments_shapes(name):
    fixed, axes = EXPECTED[name]
    base = check_overrides([f"+sweep={name}"], multirun=True).base
    for key, value in fixed.items():
        assert OmegaConf.select(base, key) == value, key
    for key, value in axes.items():
        assert base.hydra.sweeper.params[key] == value


def test_command_line_values_override_a_sweep_file():
    base = check_overrides(["+sweep=fused_vs_loop", "batch=4", "model.hidden_size=16"],
                           multirun=True).base
    assert base.batch == 4 and base.model.hidden_size == 16

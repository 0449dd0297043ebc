"""What a trial is: the structured-config schema, the ready sweeps, and the checks that
refuse bad input before anything runs. Imports neither torch nor Ray nor MLflow."""

from rnnsweep.config.schema import RnnsweepConfig, conf_dir, register, sweeps_dir

__all__ = ["RnnsweepConfig", "conf_dir", "register", "sweeps_dir"]

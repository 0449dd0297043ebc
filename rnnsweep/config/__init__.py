"""What a trial is: the structured-config schema, command-line parsing, the ready sweeps,
the objective's settings, the bounds and long-trial rules of a config, and the one error
type of up-front checks. Pure configuration: imports neither torch nor Ray nor MLflow,
nor any rnnsweep package above it (``rnnsweep.preflight`` runs the checks that need
those: composition, the user-model probe, the store, this machine)."""

from rnnsweep.config.schema import RnnsweepConfig, conf_dir, register, sweeps_dir

__all__ = ["RnnsweepConfig", "conf_dir", "register", "sweeps_dir"]

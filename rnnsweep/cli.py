"""``python -m rnnsweep``: check the command line, then hand it to Hydra."""

from __future__ import annotations

import sys

import hydra

from rnnsweep import config, sweep_summary, sweeps
from rnnsweep.app import task
from rnnsweep.validation import ConfigError, check_overrides

# Hydra flags after which the command does not run trials (help, config printing, ...).
_NO_TRIAL_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c",
                   "--shell-completion", "-sc", "--version"}


def main() -> None:
    config.register()
    sweeps.register()
    args = sys.argv[1:]
    if not _NO_TRIAL_FLAGS.intersection(args):
        multirun = "-m" in args or "--multirun" in args
        overrides = [a for a in args if not a.startswith("-")]
        try:
            check_overrides(overrides, multirun)
        except ConfigError as exc:
            print(f"rnnsweep: error: {exc}", file=sys.stderr)
            sys.exit(2)
    app = hydra.main(version_base="1.3", config_path=str(config.conf_dir()),
                     config_name="config")(task)
    app()
    if sweep_summary.last_failed:
        sys.exit(1)

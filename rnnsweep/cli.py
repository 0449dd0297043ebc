"""``python -m rnnsweep``: check the command line, then hand it to Hydra."""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import OmegaConf

from rnnsweep import config, sweeps
from rnnsweep.resources import LOCAL_ONLY_RAY_ENV
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
            base = check_overrides(overrides, multirun)
        except ConfigError as exc:
            print(f"rnnsweep: error: {exc}", file=sys.stderr)
            sys.exit(2)
        keep_ray_on_loopback(OmegaConf.select(base, "ray.address"))
    # Imported only now: torch and MLflow cost seconds that a refused command should not pay.
    from rnnsweep import sweep_summary
    from rnnsweep.app import task

    app = hydra.main(version_base="1.3", config_path=str(config.conf_dir()),
                     config_name="config")(task)
    app()
    if sweep_summary.last_failed:
        sys.exit(1)


def keep_ray_on_loopback(address: str | None) -> None:
    """Keeps an embedded or loopback Ray on 127.0.0.1.

    ``ray.init`` rewrites a 127.0.0.1 node address to the machine's outward one, so its
    servers would listen beyond loopback. Ray's local-only mode (the one it uses on macOS)
    keeps them on loopback; Ray reads the switch when it is imported, hence here, before
    any Ray import. A named remote cluster is left alone.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    host = (address or "127.0.0.1").removeprefix("ray://").rpartition(":")[0] or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        os.environ.setdefault(LOCAL_ONLY_RAY_ENV, "0")

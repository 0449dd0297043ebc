"""rnnsweep: sweep, measure and record recurrent networks with Hydra, Ray and MLflow."""

from rnnsweep import privacy

__version__ = "0.1.0"

# Before anything imports MLflow, which decides on telemetry when it is imported.
privacy.telemetry_off()

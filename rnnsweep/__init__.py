"""rnnsweep: sweep, measure and record recurrent networks with Hydra, Ray and MLflow."""

__version__ = "0.1.0"

"""rnnsweep's version and those of what it runs on, for bug reports (``--version``,
:func:`rnnsweep.versions`)."""

from __future__ import annotations

__version__ = "0.1.0"  # pyproject.toml's; rnnsweep.__version__ hands it on


def versions() -> dict[str, str]:
    """rnnsweep's version and those of what it runs on, for bug reports. CUDA is the
    version torch was built with, and whether a device is visible."""
    found = {"rnnsweep": __version__}
    for name, dist in (("torch", "torch"), ("Ray", "ray"), ("MLflow", "mlflow"),
                       ("Hydra", "hydra-core")):
        found[name] = _version(dist)
    try:
        # Imported here: only --version pays for torch, not every command that imports this.
        import torch

        built = torch.version.cuda
        found["CUDA"] = (f"{built} ({torch.cuda.device_count()} device(s))" if built
                         else "none (CPU build)")
    except Exception as exc:  # noqa: BLE001 - a broken torch is itself worth reporting
        found["CUDA"] = f"unknown (torch: {type(exc).__name__})"
    return found


def _version(dist: str) -> str:
    # Imported here: 40 ms that `import rnnsweep`, which reads __version__, should not pay.
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"

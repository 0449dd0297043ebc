"""Every use rnnsweep makes of Ray's private API (``ray._raylet``, underscored
arguments), each where no public API does the same.

- A worker's process title names the trial it runs: Ray sets it through its own title
  setter, which is the only one that ``ps`` shows the same way as Ray's own titles.
- A driver asks a cluster's GCS directly whether it accepts this process's token: one
  request that answers at once, where ``ray.init`` retries for 20 s and then says
  nothing of the token.
- The embedded Ray's temp dir is rnnsweep's own private directory; ``ray.init`` takes it
  only as ``_temp_dir`` (``ray start --temp-dir`` is the public form, for a CLI).

Tested, access by access, in ``tests/test_adapters.py``.
"""

from __future__ import annotations

from typing import Any

from ray import _raylet

__all__ = ["connect_gcs", "set_process_title", "temp_dir_option"]


def set_process_title(title: str) -> None:
    """This worker process's title, as Ray sets its own (``ray::IDLE``); a Ray without
    the setter leaves the title as it is."""
    # Ray's _raylet stub declares no setproctitle, though the compiled module has it.
    setter = getattr(_raylet, "setproctitle", None)
    if setter is not None:
        setter(title)


def connect_gcs(address: str) -> None:
    """Connects a GCS client to the cluster at ``address`` (host:port of its GCS) and
    lets it go: raises ``ray.exceptions.AuthenticationError`` where the cluster refuses
    this process's token."""
    # Ray's _raylet stub declares no GcsClient, though the compiled module has it.
    _raylet.GcsClient(address=address)  # type: ignore[attr-defined]


def temp_dir_option(path: str) -> dict[str, Any]:
    """The ``ray.init`` keyword that puts a local Ray's temp dir (sessions, sockets,
    logs) at ``path``."""
    return {"_temp_dir": path}


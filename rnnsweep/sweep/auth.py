"""Ray clusters with token authentication: a wrong or missing token is one line.

Ray 2.60 turns token authentication on for clusters started with ``ray start``. A driver
without the cluster's token gets 20 s of native ``gcs_client`` warnings and then
"Failed to connect", with no word about the token. One direct request to the cluster's
GCS answers at once with ``AuthenticationError``; its native warning is kept off the
terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from ray.exceptions import AuthenticationError

from rnnsweep.adapters import ray_private

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def token_problem(address: str) -> str | None:
    """Why the cluster at ``address`` (host:port of its GCS) refuses this process, or
    None when it does not (any other failure is left to ``ray.init`` to report)."""
    try:
        with _native_stderr_silenced():
            ray_private.connect_gcs(address)
    except AuthenticationError:
        mode = os.environ.get(AUTH_MODE_ENV, "unset")
        return (f"the cluster requires token authentication and this process's token is "
                f"missing or wrong ({AUTH_MODE_ENV} is {mode}); set {AUTH_MODE_ENV}=token "
                f"and {TOKEN_ENV}=<the cluster's token> (or {TOKEN_PATH_ENV}=<a file "
                "holding it>; the head node keeps it in ~/.ray/auth_token)")
    except Exception:  # noqa: BLE001 - not an authentication problem; ray.init reports it
        return None
    return None


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Ray's C++ client logs straight to file descriptor 2; Python's sys.stderr cannot
    hold it back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)

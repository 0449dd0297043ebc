"""Nothing leaves the machine unless the user asks.

MLflow 3.17 sends telemetry by default (the driver looks up ``config.mlflow-telemetry.io``),
and Ray 2.60's dashboard process, which every Ray head starts whether or not the
dashboard is on, asks the cloud's metadata service which cloud it runs in (HTTP to
169.254.169.254, DNS for ``metadata.google.internal``) even with usage statistics off.
Ray has no switch for that probe (``UsageStatsHead.run`` calls
``get_cluster_config_to_report`` unconditionally), so the embedded Ray is started with a
plain-HTTP proxy on a closed loopback port: the probe fails at once on 127.0.0.1 and no
name is resolved. Ray's own loopback traffic bypasses it (``no_proxy``). The worker
processes get the user's own proxy settings back through the job's ``runtime_env``.

Every default here is ``setdefault``: the user's environment wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rnnsweep.redaction import DRIVER_ONLY_ENV

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Ray's usage statistics: its dashboard would post them a minute into every session.
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Port 9 (discard) on loopback: nothing listens there, so a proxied request fails at once.
_DEAD_PROXY = "http://127.0.0.1:9"
_PROXY_KEYS = ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY")
_LOOPBACK = "127.0.0.1,localhost,::1"


def telemetry_off() -> None:
    """The environment defaults of every entry point (the ``rnnsweep`` command, the API's
    calls, ``python -m rnnsweep.report``, ``rnnsweep.compare``, the launcher plugin),
    installed by each before it does anything; importing rnnsweep changes nothing.

    MLflow decides on telemetry when it is imported; an entry point that runs as a module
    (``python -m rnnsweep.compare``) has imported it by then, so its client is set up
    again. It fetches nothing before its first event, so nothing has left yet."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    telemetry = sys.modules.get("mlflow.telemetry")
    if telemetry is not None:
        telemetry.set_telemetry_client()


@contextmanager
def no_cloud_probes() -> Iterator[dict[str, str]]:
    """While Ray's head processes start, plain HTTP off the machine goes nowhere, and the
    tracking credentials are out of the environment Ray's processes (and so every worker)
    inherit: only the driver's MLflow client reads them. Yields the environment the job's
    workers should get back (the user's own proxy settings; an empty value is unset for
    ``requests``)."""
    secrets = {key: os.environ.pop(key) for key in DRIVER_ONLY_ENV if key in os.environ}
    try:
        if os.environ.get("RNNSWEEP_ALLOW_CLOUD_PROBES") == "1":
            yield {}
        else:
            with _dead_proxy() as worker_env:
                yield worker_env
    finally:
        os.environ.update(secrets)


@contextmanager
def _dead_proxy() -> Iterator[dict[str, str]]:
    saved = {key: os.environ.get(key) for key in _PROXY_KEYS}
    os.environ.update(http_proxy=_DEAD_PROXY, HTTP_PROXY=_DEAD_PROXY,
                      no_proxy=_LOOPBACK, NO_PROXY=_LOOPBACK)
    try:
        yield {key: value or "" for key, value in saved.items()}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

"""Credentials in URIs: kept out of everything rnnsweep writes or prints.

A tracking URI may carry a password (``http://alice:pw@host``, ``postgresql://u:pw@h/db``)
or a token (``?token=...``). The CLI moves them out of the command line before Hydra sees
it (Hydra writes its overrides to ``multirun.yaml`` and ``.hydra/``), so every config,
param, tag, run name, artifact and report holds the credential-free form; only
``connection_uri`` gives the real one back, to connect with.

For HTTP(S) servers the credentials go where MLflow itself reads them
(``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``), so the client's own URI, which
MLflow prints ("View run ... at <uri>"), has none. Any other scheme (a database URI) keeps
its real URI in the process environment under ``SECRET_URI_ENV`` and shows ``***`` in
place of each secret. Environment variables are never logged or recorded.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rnnsweep.config.errors import ConfigError

MASK = "***"
SECRET_URI_ENV = "RNNSWEEP_TRACKING_SECRET_URI"
USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = (
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# Where a tracking URI's credentials live: read by the driver's MLflow client alone.
DRIVER_ONLY_ENV = (USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV, SECRET_URI_ENV)

# Query parameters that carry secrets (lower-cased; compared after dropping - and _).
_SECRET_PARAMS = {"token", "accesstoken", "apikey", "key", "password", "passwd", "pwd",
                  "secret", "clientsecret", "sig", "signature", "auth", "authorization",
                  "sessiontoken", "credential", "credentials"}
_TOKEN_PARAMS = {"token", "accesstoken"}
# A URI anywhere in a line of text: scheme://, then anything up to whitespace or a quote.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def redact(text: str) -> str:
    """``text`` with the secret part of every URI in it replaced by ``***``."""
    if "://" not in text:
        return text
    return _URI.sub(lambda m: redact_uri(m.group(0)), text)


def redact_uri(uri: str) -> str:
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{_redact_userinfo(userinfo)}@{host}"
    query = _redact_query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_credentials(uri: str) -> bool:
    return redact_uri(uri) != uri


def hide_credentials(uri: str) -> str:
    """Moves ``uri``'s credentials into this process's environment (children inherit it)
    and returns the URI to show and record in its place."""
    if not has_credentials(uri):
        return uri
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return _hide_http(parts)
    os.environ[SECRET_URI_ENV] = uri
    return redact_uri(uri)


class CredentialsInOverride(ConfigError):
    """A URI with credentials in an override that has nowhere safe to keep them."""


def hide_in_overrides(args: list[str]) -> list[str]:
    """The command line with each ``tracking.uri`` override's credentials moved out
    (``hide_credentials``): Hydra, which writes its overrides to disk, never sees them.

    Any other override whose value holds a URI with credentials is refused: nothing else
    rnnsweep connects to takes credentials from the environment, and Hydra would write
    them into ``multirun.yaml``, ``.hydra/`` and the run's params."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") == "tracking.uri" and value:
            arg = f"{key}={hide_credentials(value)}"
        elif eq and redact(value) != value:
            raise CredentialsInOverride(
                f"{key.lstrip('+~')}={redact(value)}: a URI with credentials is taken only "
                "in tracking.uri; pass other credentials through the environment (for a "
                "Ray cluster, RAY_AUTH_TOKEN)")
        out.append(arg)
    return out


def connection_uri(uri: str) -> str:
    """The URI to connect with, for a URI as the config holds it."""
    secret = os.environ.get(SECRET_URI_ENV)
    if secret and MASK in uri and redact_uri(secret) == uri:
        return secret
    if urlsplit(uri).scheme in ("http", "https"):
        return hide_credentials(uri)  # from a config file: MLflow must not print them
    return uri


def _hide_http(parts) -> str:
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if colon:
            os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV] = user, password
        else:
            os.environ[TOKEN_ENV] = user  # https://<token>@host: a bare token
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if _normal(key) in _TOKEN_PARAMS:
            os.environ[TOKEN_ENV] = value
        else:
            kept.append((key, value))
    clean = urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), parts.fragment))
    if has_credentials(clean):  # some other secret parameter: keep the real URI aside
        os.environ[SECRET_URI_ENV] = clean
        return redact_uri(clean)
    return clean


def _redact_query(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_normal(k) in _SECRET_PARAMS for k, _ in pairs):
        return query
    return "&".join(f"{k}={MASK}" if _normal(k) in _SECRET_PARAMS else f"{k}={v}"
                    for k, v in pairs)


def _normal(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _redact_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{user}:{MASK}"
    # ``https://ghp_xxx@host``: a long opaque user name is a token, not a name.
    return MASK if len(user) >= 20 else user

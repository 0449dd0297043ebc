"""The store and the output directories, checked before Ray starts.

Every check reads and changes nothing: a SQLite file is opened read-only, a missing
directory is reported, never created, and a server gets one request with a 5 s timeout
instead of MLflow's minutes of retries. Each problem is one line naming the key.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from rnnsweep.config.errors import ConfigError
from rnnsweep.redaction import (
    PASSWORD_ENV,
    TOKEN_ENV,
    USERNAME_ENV,
    connection_uri,
    redact,
)

SERVER_TIMEOUT_S = 5.0
AUTH_TIMEOUT_S = 60.0
# MLflow's experiments.name column is VARCHAR(256).
MAX_EXPERIMENT_NAME = 256
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
SCHEMES = ("sqlite", "http", "https", *DATABASE_SCHEMES, "databricks")
# The Python package that provides each database driver module SQLAlchemy asks for.
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]",
                   "MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "pyodbc": "pyodbc",
                   "pymssql": "pymssql", "asyncpg": "asyncpg", "pg8000": "pg8000"}
_SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(base: DictConfig, overrides: list[str], multirun: bool) -> None:
    """``base`` is the composed config; ``overrides`` the command line (Hydra's output
    directories are read from it, as validation does not compose ``hydra.*``)."""
    check_experiment(OmegaConf.select(base, "tracking.experiment"))
    check_uri(OmegaConf.select(base, "tracking.uri"))
    check_output_dir(overrides, multirun)


def check_experiment(name: str | None) -> None:
    if not name or not name.strip():
        raise ConfigError("tracking.experiment: must be a non-empty name")
    if len(name) > MAX_EXPERIMENT_NAME:
        raise ConfigError(f"tracking.experiment: {len(name)} characters; "
                          f"MLflow allows at most {MAX_EXPERIMENT_NAME}")


def check_uri(uri: str | None) -> None:
    if not uri:
        raise ConfigError("tracking.uri: must name a store (sqlite:///path or http://host:port)")
    resolved = resolve_uri(uri)
    scheme = urlsplit(resolved).scheme.split("+", 1)[0]
    shown = f"tracking.uri={redact(uri)}"
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE") == "true":
        return  # the user opted in to MLflow's file store; it creates its own directory
    if scheme not in SCHEMES:
        what = f"scheme '{scheme}'" if scheme else "a plain path (MLflow's file store)"
        raise ConfigError(f"{shown}: {what} is not supported; allowed: "
                          f"{', '.join(f'{s}://' for s in SCHEMES)}")
    if scheme == "sqlite":
        _check_sqlite(shown, resolved)
    elif scheme == "databricks":
        return  # Databricks' own profile and credentials decide; MLflow reports them
    elif scheme in DATABASE_SCHEMES:
        _check_driver(shown, connection_uri(resolved))
        _check_answers(shown, connection_uri(resolved))
    else:
        _check_server(shown, connection_uri(resolved))


def resolve_uri(uri: str, base: Path | None = None) -> str:
    """``sqlite:///mlflow.db`` is relative to the launch directory; make it absolute so
    every process that writes or reads the store means the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (base or Path.cwd()) / uri[len(prefix):]
        return f"{prefix}{path.resolve()}"
    if "://" not in uri:
        return str(((base or Path.cwd()) / uri).resolve())
    return uri


def _check_sqlite(shown: str, uri: str) -> None:
    path = Path(uri.removeprefix("sqlite:///"))
    if str(path) in (":memory:", ""):
        raise ConfigError(f"{shown}: an in-memory store would lose every run; name a file")
    parent = path.parent
    existing = _existing_ancestor(parent)
    if not existing.is_dir():
        raise ConfigError(f"{shown}: {existing} is a file, not a directory")
    if existing != parent:
        raise ConfigError(f"{shown}: directory {parent} does not exist (rnnsweep does not "
                          "create it)")
    if path.is_dir():
        raise ConfigError(f"{shown}: {path} is a directory, not a SQLite file")
    if not path.exists():
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{shown}: directory {parent} is not writable")
        return
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{shown}: {path} (or its directory) is not writable")
    _check_sqlite_file(shown, path)


def _check_sqlite_file(shown: str, path: Path) -> None:
    """Read-only: the header, then SQLite's own ``quick_check`` on a read-only handle."""
    with path.open("rb") as f:
        header = f.read(len(_SQLITE_HEADER))
    if not header:
        return  # an empty file is an empty database to SQLite
    if header != _SQLITE_HEADER:
        raise ConfigError(f"{shown}: {path} is not a SQLite database")
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=SERVER_TIMEOUT_S)
        try:
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{shown}: {path} is damaged ({exc})") from None
    if verdict != "ok":
        raise ConfigError(f"{shown}: {path} is damaged ({verdict})")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _check_driver(shown: str, uri: str) -> None:
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(uri).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (exc.name or dialect.driver).split(".", 1)[0]
        package = DRIVER_PACKAGES.get(module, module)
        raise ConfigError(f"{shown}: the {dialect.name} driver '{module}' is not installed; "
                          f"pip install {package}") from None


def _check_answers(shown: str, uri: str) -> None:
    """A database server: does anything listen at its host and port?"""
    parts = urlsplit(uri)
    default_ports = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
    port = parts.port or default_ports.get(parts.scheme.split("+", 1)[0], 0)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port),
                                 timeout=SERVER_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"{shown}: the server does not answer ({_reason(exc)})") from None


def _check_server(shown: str, uri: str) -> None:
    """An MLflow tracking server: one request to its health endpoint and one to its API,
    5 s each at most, with the credentials and TLS settings MLflow itself would use."""
    import requests

    base = uri.rstrip("/")
    settings = {"timeout": SERVER_TIMEOUT_S, "verify": _tls_verify()}
    try:
        requests.get(f"{base}/health", **settings)
    except requests.RequestException as exc:
        parts = urlsplit(uri)
        where = f"{parts.hostname}:{parts.port}" if parts.port else f"{parts.hostname}"
        reason = (f"no answer within {SERVER_TIMEOUT_S:g} s" if isinstance(exc, requests.Timeout)
                  else f"cannot connect to {where}" if isinstance(exc, requests.ConnectionError)
                  else _reason(exc))
        raise ConfigError(f"{shown}: the server does not answer ({reason})") from None
    try:  # it answers; checking a password can take the server a while (PBKDF2)
        answer = requests.get(f"{base}/api/2.0/mlflow/experiments/search",
                              params={"max_results": 1}, auth=_auth(),
                              **{**settings, "timeout": (SERVER_TIMEOUT_S, AUTH_TIMEOUT_S)})
    except requests.RequestException:
        return  # MLflow itself reports whatever this was
    if answer.status_code in (401, 403):
        raise ConfigError(f"{shown}: the server refused the credentials (HTTP "
                          f"{answer.status_code}); give them in the URI or as "
                          f"{USERNAME_ENV}/{PASSWORD_ENV} or {TOKEN_ENV}")


def _auth():
    """Basic or bearer credentials, from where MLflow reads them."""
    import requests

    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if user and password:
        return requests.auth.HTTPBasicAuth(user, password)
    token = os.environ.get(TOKEN_ENV)
    if token:
        def bearer(request):
            request.headers["Authorization"] = f"Bearer {token}"
            return request
        return bearer
    return None


def _tls_verify() -> bool | str:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def check_output_dir(overrides: list[str], multirun: bool) -> None:
    """The directory Hydra will write into (or its nearest existing ancestor, which Hydra
    creates it under) must be writable: otherwise Hydra fails after the sweep began."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    named = next((o.split("=", 1)[1] for o in reversed(overrides)
                  if o.split("=", 1)[0].lstrip("+") == key), None)
    target = Path(named.split("${", 1)[0]) if named else Path.cwd()
    existing = _existing_ancestor(target.absolute())
    label = f"{key}={named}" if named else f"the working directory {existing}"
    if not existing.is_dir():
        raise ConfigError(f"{label}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{label}: {existing} is not writable (Hydra writes its outputs "
                          f"there; set {key}=<a writable directory>)")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:200]

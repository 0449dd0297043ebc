"""The store and the output directories, checked before Ray starts (``rnnsweep.preflight``),
and the store a report or a comparison reads (``check_uri``, ``resolve_uri``).

Every check reads and changes nothing: a SQLite file is opened read-only, a missing
directory is reported, never created (an output directory's ancestor gets one empty
directory made and removed at once: only that proves it writable), a database gets one
connection and a server one request, 5 s each at most, instead of MLflow's minutes of
retries. Each problem is one line naming the key; no password is ever in it.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
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
from rnnsweep.text import first_line

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


def check_uri(uri: str | None, key: str = "tracking.uri", read_only: bool = False) -> None:
    """``read_only``: a command that only reads the store (report, compare) needs an
    existing MLflow store, and never one it could create or migrate."""
    if not uri:
        raise ConfigError(f"{key}: must name a store (sqlite:///path or http://host:port)")
    shown = f"{key}={redact(uri)}"
    _check_in_memory(shown, uri)
    resolved = resolve_uri(uri)
    try:
        scheme = urlsplit(resolved).scheme.split("+", 1)[0]
        urlsplit(resolved).port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE") == "true":
        return  # the user opted in to MLflow's file store; it creates its own directory
    if scheme not in SCHEMES:
        what = f"scheme '{scheme}'" if scheme else "a plain path (MLflow's file store)"
        raise ConfigError(f"{shown}: {what} is not supported; allowed: "
                          f"{', '.join(f'{s}://' for s in SCHEMES)}")
    if scheme == "sqlite" and read_only:
        _check_sqlite_store(shown, resolved)
    elif scheme == "sqlite":
        _check_sqlite(shown, resolved)
    elif scheme == "databricks":
        _check_databricks(shown, resolved)
    elif scheme in DATABASE_SCHEMES:
        _check_driver(shown, connection_uri(resolved))
        _check_answers(shown, connection_uri(resolved))
        _check_database(shown, connection_uri(resolved))
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


def _check_in_memory(shown: str, uri: str) -> None:
    """``sqlite://`` is SQLite's in-memory database: every run would go with the process.
    ``sqlite:///:memory:`` is not even that: SQLAlchemy makes a file named ``:memory:``."""
    parts = urlsplit(uri)
    if parts.scheme.split("+", 1)[0] != "sqlite":
        return
    path = uri.split("://", 1)[1].split("?", 1)[0]
    if path in ("", "/") or path.lstrip("/") == ":memory:" or "mode=memory" in parts.query:
        raise ConfigError(f"{shown}: an in-memory store loses every run when the command "
                          "ends; name a file (sqlite:///mlflow.db)")


def _check_sqlite(shown: str, uri: str) -> None:
    path = Path(uri.removeprefix("sqlite:///"))
    parent = path.parent
    existing = _existing_ancestor(parent)
    if not existing.is_dir():
        raise ConfigError(f"{shown}: {existing} is a file, not a directory")
    if existing != parent:
        raise ConfigError(f"{shown}: directory {parent} does not exist (rnnsweep does not "
                          "create it)")
    if path.is_dir():
        raise ConfigError(f"{shown}: {path} is a directory, not a SQLite file")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{shown}: {path} is not a regular file (a device or a pipe "
                          "keeps no records)")
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


def _check_sqlite_store(shown: str, uri: str) -> None:
    """A store to read: an existing SQLite file holding MLflow's tables. MLflow would
    create its tables in any other file it is pointed at, the user's own included."""
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file" if path.exists() \
            else "no such file"
        raise ConfigError(f"{shown}: no MLflow store at {path} ({what})")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{shown}: {path} is not readable")
    _check_sqlite_file(shown, path)
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=SERVER_TIMEOUT_S)
    try:
        tables = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{shown}: {path} is damaged ({exc})") from None
    finally:
        db.close()
    if not {"experiments", "runs", "alembic_version"} <= tables:
        raise ConfigError(f"{shown}: {path} is not an MLflow store (no MLflow tables)")


def _check_databricks(shown: str, uri: str) -> None:
    """Databricks' own profile and credentials decide; MLflow's own report of a missing
    profile is a 40-line traceback."""
    import logging

    quiet = logging.getLogger("mlflow.utils.databricks_utils")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its warning restates what the one line says
    try:
        from mlflow.utils.databricks_utils import get_databricks_host_creds

        get_databricks_host_creds(uri)
    except Exception:  # noqa: BLE001 - any failure here means no usable credentials
        profile = urlsplit(uri).netloc or "DEFAULT"
        raise ConfigError(f"{shown}: no Databricks credentials for profile {profile!r} "
                          "(set DATABRICKS_HOST and DATABRICKS_TOKEN, or run "
                          "'databricks auth login'; needs pip install databricks-sdk)") from None
    finally:
        quiet.setLevel(level)


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


def _check_database(shown: str, uri: str) -> None:
    """One connection, 5 s at most: a wrong password or a missing database is named
    now, not after MLflow's retries. The driver's message is not shown: it may quote the
    URI, and with it the password."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import SQLAlchemyError

    url = make_url(uri)
    engine = create_engine(url, connect_args=_connect_timeout(url.get_backend_name()),
                           poolclass=_null_pool())
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise ConfigError(f"{shown}: {_database_refusal(exc, url)}") from None
    finally:
        engine.dispose()


def _connect_timeout(backend: str) -> dict:
    seconds = int(SERVER_TIMEOUT_S)
    return {"postgresql": {"connect_timeout": seconds}, "mysql": {"connect_timeout": seconds},
            "mssql": {"timeout": seconds}}.get(backend, {})


def _null_pool():
    from sqlalchemy.pool import NullPool

    return NullPool


def _database_refusal(exc: Exception, url) -> str:
    """Why the database refused, in words that carry no secret."""
    message = str(getattr(exc, "orig", None) or exc).lower()
    if "password" in message or "authentication" in message or "access denied" in message:
        return (f"the database server refused user {url.username!r} (wrong password or no "
                "such user)")
    if "does not exist" in message or "unknown database" in message:
        return f"the database {url.database!r} does not exist on {url.host}:{url.port}"
    if "timeout" in message or "timed out" in message:
        return f"the database server did not answer within {SERVER_TIMEOUT_S:g} s"
    return f"cannot connect to the database ({type(getattr(exc, 'orig', exc)).__name__})"


def _check_server(shown: str, uri: str) -> None:
    """An MLflow tracking server: one request to its health endpoint and one to its API,
    5 s each at most, with the credentials and TLS settings MLflow itself would use."""
    import requests

    base = uri.rstrip("/")
    verify = _tls_verify()
    try:
        requests.get(f"{base}/health", timeout=SERVER_TIMEOUT_S, verify=verify)
    except requests.RequestException as exc:
        parts = urlsplit(uri)
        where = f"{parts.hostname}:{parts.port}" if parts.port else f"{parts.hostname}"
        reason = (f"no answer within {SERVER_TIMEOUT_S:g} s" if isinstance(exc, requests.Timeout)
                  else f"cannot connect to {where}" if isinstance(exc, requests.ConnectionError)
                  else _reason(exc))
        if isinstance(exc, requests.ConnectionError) and _listens(parts):
            raise ConfigError(f"{shown}: something listens at {where} but does not answer "
                              "HTTP: not an MLflow tracking server") from None
        raise ConfigError(f"{shown}: the server does not answer ({reason})") from None
    try:  # it answers; checking a password can take the server a while (PBKDF2)
        answer = requests.get(f"{base}/api/2.0/mlflow/experiments/search",
                              params={"max_results": 1}, auth=_auth(),
                              timeout=(SERVER_TIMEOUT_S, AUTH_TIMEOUT_S), verify=verify)
    except requests.RequestException:
        return  # MLflow itself reports whatever this was
    if answer.status_code in (401, 403):
        raise ConfigError(f"{shown}: the server refused the credentials (HTTP "
                          f"{answer.status_code}); give them in the URI or as "
                          f"{USERNAME_ENV}/{PASSWORD_ENV} or {TOKEN_ENV}")
    if not _is_mlflow_answer(answer):
        raise ConfigError(f"{shown}: the server answers but is not an MLflow tracking server "
                          f"(HTTP {answer.status_code} from /api/2.0/mlflow/experiments/search)")
    if answer.status_code != 200:
        error = answer.json()
        raise ConfigError(f"{shown}: the MLflow server cannot serve its store "
                          f"({error.get('error_code')}: "
                          f"{_reason(Exception(error.get('message', '')))})")


def _listens(parts) -> bool:
    """A TCP connection succeeds: a server of some other protocol (a database's port)."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", port),
                                 timeout=SERVER_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _is_mlflow_answer(answer) -> bool:
    """MLflow's REST API answers JSON: a listing (``experiments``, possibly empty: ``{}``)
    or an error with MLflow's ``error_code``."""
    try:
        body = answer.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    return (answer.status_code == 200 and set(body) <= {"experiments", "next_page_token"}) \
        or "error_code" in body


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
    if not os.access(existing, os.W_OK | os.X_OK) or not _can_make_dir_in(existing):
        raise ConfigError(f"{label}: {existing} is not writable (Hydra writes its outputs "
                          f"there; set {key}=<a writable directory>)")


def _can_make_dir_in(directory: Path) -> bool:
    """Permission bits do not tell: root passes ``os.access`` on ``/proc``, where no
    directory can be made. One made and removed at once says for sure."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rnnsweep-probe-", dir=directory))
    except OSError:
        return False
    return True


def _reason(exc: Exception) -> str:
    return redact(first_line(str(exc), type(exc).__name__))[:200]

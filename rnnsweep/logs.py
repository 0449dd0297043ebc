"""Logging for the command line: rnnsweep's own diagnostics in one plain form, and the
libraries it drives kept quiet unless they have something the user must act on.

Call :func:`setup` first thing in a process that will import Ray, MLflow or matplotlib:
MLflow reads its level once, when it is imported, and the lines silenced here are
written during those imports or at Ray's start. Everything is a default the user's own
environment overrides (``MLFLOW_LOGGING_LEVEL``, ``RNNSWEEP_LOG_LEVEL``).
"""

from __future__ import annotations

import logging
import os
import sys

LEVEL_ENV = "RNNSWEEP_LOG_LEVEL"

# Libraries whose INFO lines would reach the terminal through the root logger, which
# Hydra sets to INFO during a multirun ("generated new fontManager").
_WARNINGS_ONLY = ("matplotlib",)
# MLflow's SQL store logs every database error it re-raises, with the SQL and a traceback
# (dozens of lines while a SQLite file is locked); the error reaches rnnsweep, which says
# it once, in a line.
_SILENT = ("mlflow.store.db.utils",)

# (logger, start of a message that says nothing the user can act on). Warnings that do
# matter from the same loggers still get through.
_CHATTER = (
    # Ray 2.60 turns on token authentication for every local cluster it starts and says
    # so at each start; the embedded Ray listens on loopback only. Its warning that a
    # cluster runs *without* a token is kept.
    ("ray._private.authentication.authentication_token_setup",
     "Token authentication is enabled for this Ray cluster"),
    # Written once per machine, the first time matplotlib imports (the report's plots).
    ("matplotlib.font_manager", "Matplotlib is building the font cache"),
    # Four lines per ONNX export in a trial run in this process (a single deploy run):
    # torchvision's detection operators, which no recurrent model uses.
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
)


class _DropChatter(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so that a line logged while the
    live progress display runs is drawn above it (rich swaps ``sys.stderr`` for that)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignored
        pass


class _Format(logging.Formatter):
    """``rnnsweep: warning: ...``, the form of the CLI's one-line errors."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"rnnsweep: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup() -> None:
    """Idempotent; safe to call from any entry point."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in _WARNINGS_ONLY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _SILENT:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for name, prefix in _CHATTER:
        chatty = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in chatty.filters):
            chatty.addFilter(_DropChatter(prefix))
    ours = logging.getLogger("rnnsweep")
    if not any(isinstance(h, _CurrentStderr) for h in ours.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(_Format())
        ours.addHandler(handler)
    ours.setLevel(os.environ.get(LEVEL_ENV, "WARNING").upper())
    # Hydra points the root logger at its own console format during a multirun; ours
    # keeps one form whatever Hydra does.
    ours.propagate = False

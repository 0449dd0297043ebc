"""The errors a command ends with: one line (the message) and an exit status that follows
from the class, so every entry point (the CLI, the report, compare, the Python API) ends
alike. Signals are not errors: see :class:`rnnsweep.sweep.interrupts.Interrupted`."""

from __future__ import annotations


class RnnsweepError(Exception):
    """Ends a command: ``rnnsweep: error: <message>``, exit status ``exit_status``."""

    exit_status = 1


class Refused(RnnsweepError, ValueError):
    """Bad input or an unusable setting, found before anything started or was recorded:
    exit status 2."""

    exit_status = 2

"""The one error type of up-front checks: its message is the whole user-facing line."""

from rnnsweep.errors import Refused


class ConfigError(Refused):
    """A one-line, user-facing configuration error."""

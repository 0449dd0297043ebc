"""The one error type of up-front checks: its message is the whole user-facing line."""


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""

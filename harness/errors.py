"""User-facing errors: the CLI prints them as one line (no traceback unless --debug)."""


class HarnessError(Exception):
    """A problem the user can fix: bad config, missing file, unknown plugin, bad data."""


class ConfigError(HarnessError):
    """A config value is missing, of the wrong type or out of range."""


class DataError(HarnessError):
    """A data file is missing, malformed or inconsistent."""


class PluginNotFound(HarnessError):
    """An unknown plugin name (the message carries "did you mean" suggestions)."""


class WeightsUnavailable(HarnessError):
    """Pretrained weights were asked for but cannot be loaded here."""

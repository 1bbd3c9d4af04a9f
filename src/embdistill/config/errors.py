"""The one error a bad config raises, in a module of its own so every part of the config package can raise it."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""

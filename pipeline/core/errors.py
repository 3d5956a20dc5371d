"""Typed errors a user can act on.

Library code raises these; the `kframes` command turns any of them into one line on stderr and exit
code 2, so a user never sees a traceback for bad input. Each message names the input and the problem.
"""

from __future__ import annotations


class KframesError(Exception):
    """Base of every error meant for the user (bad input, bad config), not for a bug."""

    exit_code = 2


class ConfigError(KframesError):
    """A config file or override is wrong: unknown key, bad value, missing file."""


class VideoError(KframesError):
    """A video cannot be read: missing, not a video, truncated, zero frames, index past the end."""


class DataError(KframesError):
    """A data file (JSONL, annotations) is malformed."""


class BackendError(KframesError):
    """A model backend (HTTP server, local model) failed after its retries."""

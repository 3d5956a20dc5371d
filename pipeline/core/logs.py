"""Logging set-up shared by every entry point (the `kframes` command and `python -m stages.STAGE`)."""

from __future__ import annotations

import logging

from pipeline.core.secrets import RedactingFilter

PROJECT_LOGGERS = ("pipeline", "stages", "data_builder", "rewards")


def setup_logging() -> None:
    """INFO for kframes' own messages, warnings for the libraries (the trainer's progress bar shows the steps)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:  # records of every library pass through the root's handlers
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())

"""Secrets (API keys) never reach a message, a log line or a file.

Gateways echo request headers into their error bodies, and error bodies go into exceptions, retry warnings and
run summaries. Each client registers the secret it sends (`register_secret`); `redact` replaces every registered
value in a text, and `RedactingFilter` does it for every log record once `setup_logging` installed it. Errors
are redacted where they are made (`with_retries`, the clients) and again where they are shown (the CLI).
"""

from __future__ import annotations

import logging
import threading

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
MASK = "***"
# Shorter values would mask ordinary words; real keys are far longer.
MIN_SECRET_LENGTH = 8


def register_secret(value: str | None) -> None:
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for value in secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Formats a record's message with its arguments, then redacts it (arguments may carry the secret)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            record.msg = redact(record.getMessage())
            record.args = ()
        return True

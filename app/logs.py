"""Log output: one JSON object a line (for collectors), or text on a terminal.

Every logger of the server (cycles.*, the HTTP server's own) writes through
one handler on stderr with one of two formatters. A record may carry
structured fields in ``extra={"fields": {...}}`` (the access log does): JSON
output puts them at the top level, text output appends them as key=value.

No credential may reach a log line. Nothing logs request headers, and as a
last line of defence every line is scrubbed of the admin key, the metrics
token and anything shaped like a tenant API key secret.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, Final, TextIO

import msgspec

from app.config import Settings

# Tenant API key secrets (cycles._new_secret): a fixed prefix and base64url.
_API_KEY_SECRET: Final = re.compile(r"cyc_live_[A-Za-z0-9_\-]+")
REDACTED: Final = "[REDACTED]"
_HANDLER_MARK: Final = "_cycles_handler"
_encoder: Final = msgspec.json.Encoder()

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL}


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _timestamp(created: float) -> str:
    """UTC, ISO 8601 with milliseconds: 2026-11-28T18:00:00.123Z. The
    seconds part is formatted once per second (a line per request adds up)."""
    seconds = int(created)
    if _second[0] != seconds:
        _second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    return f"{_second[1]}.{int((created - seconds) * 1000):03d}Z"


class _Scrubber:
    """Removes known secrets from a finished line."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        # Short values would redact ordinary words: only real secrets count.
        self.secrets = tuple(secret for secret in secrets if secret and len(secret) >= 8)

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        if "cyc_live_" in line:
            line = _API_KEY_SECRET.sub(REDACTED, line)
        return line


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "message", ...fields[, "exc"]} on one line."""

    def __init__(self, scrub: _Scrubber | None = None) -> None:
        super().__init__()
        self.scrub = scrub or _Scrubber(())

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created), "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return self.scrub(_encoder.encode(entry).decode())


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for a person at a terminal."""

    def __init__(self, scrub: _Scrubber | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.scrub = scrub or _Scrubber(())

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += "".join(f" {key}={value}" for key, value in fields.items() if key != "message")
        return self.scrub(line)


def use_json(settings: Settings, stream: TextIO | None = None) -> bool:
    if settings.log_format != "auto":
        return settings.log_format == "json"
    stream = stream or sys.stderr
    return not (hasattr(stream, "isatty") and stream.isatty())


def formatter(settings: Settings) -> logging.Formatter:
    scrub = _Scrubber((settings.admin_api_key, settings.metrics_token))
    return JsonFormatter(scrub) if use_json(settings) else TextFormatter(scrub)


def configure(settings: Settings) -> None:
    """Route every log record to stderr in the configured format, at the
    configured level for the cycles.* loggers. Idempotent: a second call
    (another app in the same process) replaces the handler it added."""
    # The logging HOWTO's optimisations: no record carries the thread,
    # process or caller (none is printed), and each would cost a system call
    # or a stack walk per line.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    logging.getLogger("cycles").setLevel(_LEVELS[settings.log_level])


class AccessLog:
    """The access log's writer: the same line the cycles.access logger would
    write, built without a LogRecord and the handler machinery (a line per
    request; this halves its cost). Honours the logger's level, so
    CYCLES_LOG_LEVEL=warning turns it off like any info line."""

    def __init__(self, settings: Settings, stream: TextIO | None = None) -> None:
        self.logger = logging.getLogger("cycles.access")
        self.json = use_json(settings, stream)
        self.stream = stream
        self.scrub = _Scrubber((settings.admin_api_key, settings.metrics_token))

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, message: str, fields: dict[str, Any]) -> None:
        created = time.time()
        if self.json:
            entry = {"ts": _timestamp(created), "level": "info", "logger": "cycles.access", "message": message}
            entry.update(fields)
            line = _encoder.encode(entry).decode()
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
            line = f"{stamp},{int(created % 1 * 1000):03d} INFO cycles.access: {message}" + "".join(
                f" {key}={value}" for key, value in fields.items())
        # sys.stderr is looked up per line: tests and tools replace it.
        (self.stream or sys.stderr).write(self.scrub(line) + "\n")


def granian_config(settings: Settings) -> dict[str, Any]:
    """logging.config.dictConfig for the HTTP server's own loggers: the same
    stream and format as ours (granian applies it in every process)."""
    kind = "json" if use_json(settings) else "text"
    return {
        "formatters": {"cycles": {"()": f"app.logs.{'JsonFormatter' if kind == 'json' else 'TextFormatter'}"}},
        "handlers": {"console": {"formatter": "cycles", "class": "logging.StreamHandler",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {"_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
                    "granian.access": {"handlers": ["console"], "level": "INFO", "propagate": False}},
    }

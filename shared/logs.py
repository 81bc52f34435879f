"""JSON log lines for the web processes (gunicorn's access and error logs, Flask and segrec loggers).

One JSON object per line, with the request id of the request being served (accepted from X-Request-ID or
generated, see shared.web.register_request_id), so a line in the access log, an error trace and the
error envelope the client saw can be joined. deploy/gunicorn.conf.py installs LOGCONFIG through
gunicorn's `logconfig_dict`.
"""

from __future__ import annotations

import json
import logging
import time

ACCESS_LOGGER = "gunicorn.access"


def current_request_id() -> str | None:
    """The id of the Flask request being served, if any."""
    try:
        from flask import g, has_request_context
    except ImportError:  # pragma: no cover - flask is a dependency; gunicorn's master may log first
        return None
    if has_request_context():
        return g.get("request_id")
    return None


def access_fields(atoms: dict) -> dict:
    """Fields of one gunicorn access line, from gunicorn's log atoms (the record's args)."""
    duration_us = atoms.get("D", "-")
    return {
        "remote_addr": atoms.get("h"),
        "method": atoms.get("m"),
        "path": atoms.get("U"),
        "query": atoms.get("q") or None,
        "status": int(atoms["s"]) if str(atoms.get("s", "")).isdigit() else atoms.get("s"),
        "bytes": int(atoms["B"]) if str(atoms.get("B", "")).isdigit() else 0,
        "duration_ms": round(int(duration_us) / 1000, 3) if str(duration_us).isdigit() else None,
        "user_agent": atoms.get("a"),
        "request_id": atoms.get("{x-request-id}o") if atoms.get("{x-request-id}o") not in (None, "-") else None,
    }


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object: time, level, logger, message, request id, and the trace."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.name == ACCESS_LOGGER and isinstance(record.args, dict):
            entry["message"] = "request"
            entry.update(access_fields(record.args))
        else:
            entry["message"] = record.getMessage()
            request_id = current_request_id()
            if request_id:
                entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def logging_config(level: str = "info") -> dict:
    """A logging.config dictConfig: everything to stdout as JSON (gunicorn's access and error logs too)."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "shared.logs.JsonFormatter"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }

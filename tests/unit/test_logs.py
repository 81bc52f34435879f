"""JSON log lines: gunicorn's access records and application records with the request id."""

from __future__ import annotations

import json
import logging

from flask import Flask, g

from shared.logs import JsonFormatter, logging_config


def record(name: str, message: str, args) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)


def test_access_record_becomes_fields():
    atoms = {"h": "10.0.0.7", "m": "GET", "U": "/v1/popular", "q": "limit=3", "s": "200", "B": "512",
             "D": "4321", "a": "curl/8", "{x-request-id}o": "abc123"}
    line = json.loads(JsonFormatter().format(record("gunicorn.access", "%(h)s", atoms)))
    assert {key: value for key, value in line.items() if key != "time"} == {
        "level": "info", "logger": "gunicorn.access", "message": "request", "remote_addr": "10.0.0.7",
        "method": "GET", "path": "/v1/popular", "query": "limit=3", "status": 200, "bytes": 512,
        "duration_ms": 4.321, "user_agent": "curl/8", "request_id": "abc123",
    }
    assert line["time"].endswith("Z")


def test_application_record_carries_the_request_id_inside_a_request():
    app = Flask(__name__)
    formatter = JsonFormatter()
    outside = json.loads(formatter.format(record("segrec.web", "hello %s", ("there",))))
    assert outside["message"] == "hello there" and "request_id" not in outside
    with app.test_request_context("/"):
        g.request_id = "r-42"
        inside = json.loads(formatter.format(record("segrec.web", "hello", None)))
    assert inside["request_id"] == "r-42"


def test_logging_config_sends_gunicorn_logs_through_the_json_formatter():
    config = logging_config("warning")
    assert config["formatters"]["json"] == {"()": "shared.logs.JsonFormatter"}
    assert config["loggers"]["gunicorn.access"]["handlers"] == ["stdout"]
    assert config["root"]["level"] == "WARNING"

"""deploy/gunicorn.conf.py: explicit worker count, JSON logs, one control socket per gunicorn (or none),
and a metrics folder emptied at start."""

from __future__ import annotations

import runpy
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py"


def load(monkeypatch, **env) -> dict:
    for name in ("GUNICORN_WORKERS", "GUNICORN_CONTROL_SOCKET", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_LOGLEVEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_defaults_two_workers_json_logs_and_no_control_socket(monkeypatch):
    settings = load(monkeypatch)
    assert settings["workers"] == 2
    assert settings["accesslog"] == "-"
    assert settings["logconfig_dict"]["formatters"]["json"] == {"()": "shared.logs.JsonFormatter"}
    assert settings["control_socket_disable"] is True


def test_a_control_socket_path_enables_it(monkeypatch, tmp_path):
    settings = load(monkeypatch, GUNICORN_WORKERS="3", GUNICORN_CONTROL_SOCKET=str(tmp_path / "recommend.ctl"))
    assert settings["workers"] == 3
    assert settings["control_socket"] == str(tmp_path / "recommend.ctl")
    assert settings["control_socket_disable"] is False


def test_on_starting_empties_the_metrics_folder(monkeypatch, tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"old")
    (folder / "histogram_456.db").write_bytes(b"old")
    settings = load(monkeypatch, PROMETHEUS_MULTIPROC_DIR=str(folder))
    settings["on_starting"](server=None)
    assert list(folder.iterdir()) == []

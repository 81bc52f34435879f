"""The `segrec` command's exit codes and machine-readable output, against real databases."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from importlib import metadata

from click.testing import CliRunner

from services.admin.cli import main as segrec
from services.admin.stack import _stop, wait_for_processes
from shared.extensions import db
from shared.models import Run
from tests.integration.test_import import line, orders_file


def invoke(args: list[str], env: dict):
    return CliRunner().invoke(segrec, args, env=env)


def test_version_is_the_installed_one():
    result = invoke(["--version"], {})
    assert result.exit_code == 0
    assert result.output == f"segrec {metadata.version('segrec')}\n"


def test_import_exits_1_on_rejects_unless_allowed_and_0_when_clean(database_url, tmp_path):
    env = {"DATABASE_URL": database_url}
    clean = orders_file(tmp_path, [line("o1"), line("o2")], name="clean.csv")
    assert invoke(["import", "orders", str(clean), "--no-progress"], env).exit_code == 0
    dirty = orders_file(tmp_path, [line("o3"), line("o4", unit_price="-5")], name="dirty.csv")
    refused = invoke(["import", "orders", str(dirty), "--no-progress"], env)
    assert refused.exit_code == 1
    assert "1 row(s) rejected: exit status 1" in refused.output
    allowed = invoke(["import", "orders", str(dirty), "--no-progress", "--allow-rejects"], env)
    assert allowed.exit_code == 0, allowed.output


def test_keys_list_json(database_url, make_key):
    make_key("recs:read", "segments:read", name="storefront")
    env = {"DATABASE_URL": database_url}
    assert invoke(["keys", "revoke", "--id", "1"], env).exit_code == 0
    make_key("admin", name="ops-admin")
    result = invoke(["keys", "list", "--json"], env)
    assert result.exit_code == 0, result.output
    keys = json.loads(result.output)
    assert [(key["id"], key["name"], key["scopes"], key["revoked_at"] is None) for key in keys] == [
        (1, "storefront", ["recs:read", "segments:read"], False),
        (2, "ops-admin", ["admin"], True),
    ]
    assert all(len(key["prefix"]) == 12 and "key_hash" not in key for key in keys)


def test_runs_list_json(database_url):
    env = {"DATABASE_URL": database_url}
    assert json.loads(invoke(["runs", "list", "--json"], env).output) == []
    with db.session() as session:
        session.add(Run(run_id="r20250301T020000-failed01", status="failed", as_of=datetime(2025, 3, 1),
                        created_at=datetime(2025, 3, 1, 2), started_at=datetime(2025, 3, 1, 2),
                        finished_at=datetime(2025, 3, 1, 2, 5), trigger="schedule", reason="snapshot failed",
                        steps=[], metrics={}))
    result = invoke(["runs", "list", "--json"], env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{
        "run_id": "r20250301T020000-failed01", "status": "failed", "current": False, "trigger": "schedule",
        "reason": "snapshot failed", "as_of": "2025-03-01T00:00:00", "created_at": "2025-03-01T02:00:00",
        "started_at": "2025-03-01T02:00:00", "finished_at": "2025-03-01T02:05:00", "published_at": None,
    }]


def test_bootstrap_creates_one_admin_key_and_skips_training_an_empty_shop(database_url, redis_url, redis_prefix):
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    first = invoke(["bootstrap"], env)
    assert first.exit_code == 0, first.output
    lines = first.output.strip().splitlines()
    assert lines[0] == "created admin key 1 'bootstrap-admin'; store it now, it is not shown again:"
    raw_key = lines[1]
    assert lines[2] == "no orders yet: first retrain skipped (import history, then POST /v1/runs or `segrec retrain`)"
    second = invoke(["bootstrap"], env)
    assert second.exit_code == 0, second.output
    assert second.output.splitlines()[0] == "an active admin key exists (id 1): none created"
    assert raw_key not in second.output
    keys = json.loads(invoke(["keys", "list", "--json"], env).output)
    assert [(key["name"], key["scopes"]) for key in keys] == [("bootstrap-admin", ["admin"])]


def test_run_supervisor_fails_and_stops_the_rest_when_one_process_dies():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    crasher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"])
    processes = [sleeper, crasher]
    started = time.monotonic()
    try:
        assert wait_for_processes(processes, poll_seconds=0.1) == 1
    finally:
        _stop(processes)
    assert crasher.returncode == 3
    assert sleeper.returncode is not None and sleeper.returncode != 0  # stopped by SIGTERM
    assert time.monotonic() - started < 30

"""`segrec run`: the whole stack on one machine, for local use and the demo.

Starts (or finds) Redis, migrates, seeds the demo shop when the database is empty, trains once so the
APIs are ready at once, then runs both APIs under gunicorn, a Celery worker and beat until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from shared.config import REPO_ROOT, load_config
from shared.redis_server import NoRedisError, resolve_redis

DEMO_KEYS = {
    "demo-storefront": "recs:read,feedback:write",
    "demo-ops": "segments:read,segments:export",
    "demo-marketing": "campaigns:write,segments:read",
    "demo-ingest": "ingest:write",
    "demo-admin": "admin",
}


def _bin(name: str) -> str:
    """A console script of this virtualenv."""
    return str(Path(sys.executable).parent / name)


def run_stack(segmentation_port: int = 8001, recommend_port: int = 8002, demo_customers: int = 2000) -> int:
    """Run everything in the foreground until interrupted; the exit status (non-zero when a process died)."""
    config = load_config()
    var_dir = Path(config["VAR_DIR"])
    var_dir.mkdir(parents=True, exist_ok=True)
    try:
        redis_url, embedded = resolve_redis(config["REDIS_URL"], var_dir)
    except NoRedisError as error:
        raise click.ClickException(str(error)) from error
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=config["DATABASE_URL"], VAR_DIR=str(var_dir))
    metrics_dir = var_dir / "prometheus"
    metrics_dir.mkdir(exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    click.echo(f"redis: {redis_url}{' (embedded, files in var/redis)' if embedded else ''}")
    processes: list[subprocess.Popen] = []
    try:
        segrec = _bin("segrec")
        subprocess.run([segrec, "db", "upgrade"], env=env, check=True)
        subprocess.run([segrec, "demo", "seed", "--if-empty", "--customers", str(demo_customers)], env=env, check=True)
        keys = _create_demo_keys(segrec, env)
        subprocess.run([segrec, "retrain", "--if-none-published"], env=env, check=True)
        processes = _start_processes(env, segmentation_port, recommend_port)
        _print_welcome(keys, segmentation_port, recommend_port, _example_skus(config["DATABASE_URL"]))
        return wait_for_processes(processes)
    finally:
        _stop(processes)
        if embedded is not None:
            embedded.stop()


def _create_demo_keys(segrec: str, env: dict) -> dict[str, str]:
    """Revoke the previous run's demo keys and create fresh ones (keys are only ever shown once)."""
    keys = {}
    listing = subprocess.run([segrec, "keys", "list", "--json"], env=env, check=True, capture_output=True,
                             text=True).stdout
    for key in json.loads(listing):
        if key["name"] in DEMO_KEYS and key["revoked_at"] is None:
            subprocess.run([segrec, "keys", "revoke", "--id", str(key["id"])], env=env, check=True,
                           capture_output=True)
    for name, scopes in DEMO_KEYS.items():
        output = subprocess.run(
            [segrec, "keys", "create", "--name", name, "--scopes", scopes],
            env=env, check=True, capture_output=True, text=True,
        ).stdout
        keys[name] = output.strip().splitlines()[-1]
    return keys


def _start_processes(env: dict, segmentation_port: int, recommend_port: int) -> list[subprocess.Popen]:
    gunicorn_conf = str(REPO_ROOT / "deploy" / "gunicorn.conf.py")
    var_dir = Path(env["VAR_DIR"])
    api_env = dict(env, GUNICORN_WORKERS=env.get("GUNICORN_WORKERS", "2"))
    processes = []
    for service, port in (("segmentation", segmentation_port), ("recommend", recommend_port)):
        # One control socket per gunicorn: the default path is per user, so both would share one.
        service_env = dict(api_env, GUNICORN_CONTROL_SOCKET=str(var_dir / f"gunicorn-{service}.ctl"))
        command = [_bin("gunicorn"), "-c", gunicorn_conf, "--bind", f"127.0.0.1:{port}",
                   f"services.{service}.app:create_app()"]
        processes.append(subprocess.Popen(command, env=service_env, cwd=REPO_ROOT))
    celery_commands = [
        [_bin("celery"), "-A", "services.pipeline.worker", "worker", "--loglevel", "INFO", "--concurrency", "2"],
        [_bin("celery"), "-A", "services.pipeline.worker", "beat", "--loglevel", "INFO",
         "--schedule", str(var_dir / "celerybeat-schedule")],
    ]
    processes.extend(subprocess.Popen(command, env=api_env, cwd=REPO_ROOT) for command in celery_commands)
    return processes


def _example_skus(database_url: str) -> dict[str, str]:
    """A phone and a tea from the catalogue, for the example calls (demo shop names; any sku otherwise)."""
    from sqlalchemy import select

    from shared.extensions import db
    from shared.models import Product

    db.configure(database_url)
    examples = {}
    with db.session() as session:
        for label, pattern in (("phone", "Smartphone%"), ("tea", "Green tea%")):
            sku = session.execute(select(Product.sku).where(Product.name.like(pattern)).order_by(Product.sku)
                                  .limit(1)).scalar_one_or_none()
            if sku is None:
                sku = session.execute(select(Product.sku).order_by(Product.sku).limit(1)).scalar_one_or_none()
            examples[label] = sku or "SKU000001"
    db.dispose()
    return examples


def _print_welcome(keys: dict[str, str], segmentation_port: int, recommend_port: int,
                   examples: dict[str, str]) -> None:
    seg = f"http://127.0.0.1:{segmentation_port}"
    rec = f"http://127.0.0.1:{recommend_port}"
    lines = [
        "",
        "segrec is running. Demo API keys (new ones each start):",
        *[f"  {name:18} {DEMO_KEYS[name]:34} {key}" for name, key in keys.items()],
        "",
        "Try:",
        f"  curl -s {seg}/readyz",
        f"  curl -s -H 'Authorization: Bearer {keys['demo-ops']}' {seg}/v1/segments",
        f"  curl -s -H 'Authorization: Bearer {keys['demo-ops']}' '{seg}/v1/segments/tier/gold/members?limit=5'",
        f"  curl -s -H 'Authorization: Bearer {keys['demo-storefront']}' {rec}/v1/items/{examples['phone']}/bought-together",
        f"  curl -s -H 'Authorization: Bearer {keys['demo-storefront']}' -H 'Content-Type: application/json' "
        f"-d '{{\"items\":[{{\"sku\":\"{examples['tea']}\",\"quantity\":2}}]}}' {rec}/v1/cart/recommendations",
        f"  open {seg}/docs and {rec}/docs",
        f"Console (看板): {seg}/console  (sign in with a demo key above; demo-admin sees every page)",
        "",
        "Ctrl-C stops everything.",
    ]
    click.echo("\n".join(lines))


def wait_for_processes(processes: list[subprocess.Popen], poll_seconds: float = 0.5) -> int:
    """Wait until Ctrl-C or SIGTERM (status 0) or until any process exits (status 1: the stack is broken,
    and the caller stops the others). A process exiting on its own is a failure even with status 0."""
    stop = {"now": False}

    def request_stop(_signum, _frame):
        stop["now"] = True

    previous_handler = signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop["now"]:
            for process in processes:
                if process.poll() is not None:
                    click.echo(f"process {' '.join(map(str, process.args[:4]))} exited with {process.returncode}; "
                               "stopping the others", err=True)
                    return 1
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()

"""The `segrec` console script: what operators do by hand."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import click

from shared.config import load_config
from shared.extensions import db


def _settings() -> dict:
    """Settings from defaults and the environment, with the database bound."""
    config = load_config()
    db.configure(config["DATABASE_URL"], config["SHOP_TIMEZONE"])
    return config


def _version() -> str:
    """The installed segrec version (the source tree's when not installed)."""
    try:
        return metadata.version("segrec")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _iso(value) -> str | None:
    """A datetime as ISO 8601 (UTC, as stored), or None."""
    return value.isoformat() if value is not None else None


@click.group()
@click.version_option(version=_version(), prog_name="segrec", message="%(prog)s %(version)s")
def main() -> None:
    """segrec: customer segmentation and recommendations for e-commerce teams."""


# ---- db ----------------------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations up to REVISION."""
    from shared.dbadmin import upgrade

    config = load_config()
    upgrade(config["DATABASE_URL"], revision)
    click.echo(f"database at {revision}: {_safe_url(config['DATABASE_URL'])}")


def _safe_url(url: str) -> str:
    """A database URL with any password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---- keys --------------------------------------------------------------------------------------


@main.group("keys")
def keys_group() -> None:
    """API keys."""


@keys_group.command("create")
@click.option("--name", required=True, help="Who the key is for.")
@click.option("--scopes", required=True, help="Comma-separated, e.g. recs:read,segments:read")
def keys_create(name: str, scopes: str) -> None:
    """Create a key; the key is printed once, alone on the last line."""
    from shared.auth import create_key, parse_scopes
    from shared.errors import DomainError

    _settings()
    try:
        scope_list = parse_scopes(scopes)
    except DomainError as error:
        raise click.BadParameter(error.message, param_hint="--scopes") from error
    with db.session() as session:
        row, raw_key = create_key(session, name, scope_list)
    click.echo(f"created key {row.id} '{name}' (prefix {row.key_prefix}) with scopes {','.join(scope_list)}")
    click.echo("store it now: it is not shown again")
    click.echo(raw_key)


@keys_group.command("revoke")
@click.option("--id", "key_id", type=int, default=None)
@click.option("--prefix", default=None, help="The key's first 12 characters (or the whole key).")
def keys_revoke(key_id: int | None, prefix: str | None) -> None:
    """Revoke a key by id or prefix."""
    from shared.auth import revoke_key

    _settings()
    if key_id is None and not prefix:
        raise click.UsageError("give --id or --prefix")
    with db.session() as session:
        revoked = revoke_key(session, key_id=key_id, prefix=prefix)
    if not revoked:
        raise click.ClickException("no active key matched")
    click.echo(f"revoked {revoked} key(s)")


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array (id, prefix, name, scopes, created_at, revoked_at).")
def keys_list(as_json: bool) -> None:
    """List keys (never the keys themselves)."""
    from sqlalchemy import select

    from shared.models import ApiKey

    _settings()
    with db.session() as session:
        rows = list(session.execute(select(ApiKey).order_by(ApiKey.id)).scalars())
    if as_json:
        click.echo(json.dumps([
            {"id": row.id, "prefix": row.key_prefix, "name": row.name, "scopes": row.scopes.split(","),
             "created_at": _iso(row.created_at), "revoked_at": _iso(row.revoked_at)}
            for row in rows
        ], indent=2))
        return
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
        click.echo(f"{row.id}\t{row.key_prefix}\t{row.name}\t{row.scopes}\t{state}")


# ---- import and demo ----------------------------------------------------------------------------


@main.command("import")
@click.argument("kind", type=click.Choice(["orders", "customers", "products"]))
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--chunk-rows", default=50_000, show_default=True, help="Rows per streamed chunk.")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write rejected rows with reasons (default: PATH.rejects.csv).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--allow-rejects", is_flag=True,
              help="Exit 0 even when rows were rejected (they are still written to the rejects file).")
def import_command(kind: str, path: Path, chunk_rows: int, rejects: Path | None, progress: bool,
                   allow_rejects: bool) -> None:
    """Import a CSV history file (columns in the README); importing a file twice changes nothing.

    Exits 1 when any row was rejected (the good rows are stored all the same), unless --allow-rejects.
    """
    from shared.ingest import import_csv

    config = _settings()
    summary = import_csv(kind, path, db, chunk_rows=chunk_rows, rejects_path=rejects, progress=progress,
                         config=config)
    click.echo(summary.describe())
    if summary.rejected and not allow_rejects:
        click.echo(f"{summary.rejected:,} row(s) rejected: exit status 1 (--allow-rejects to accept)", err=True)
        sys.exit(1)


@main.group("demo")
def demo_group() -> None:
    """The demo shop."""


@demo_group.command("seed")
@click.option("--customers", default=2000, show_default=True, help="Shop size in customers.")
@click.option("--seed", default=None, type=int, help="Random seed (default DEMO_SEED).")
@click.option("--skus", default=300, show_default=True, help="Catalogue size.")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="The shop's 'today' (default: today, UTC), so its dormant customers are dormant now.")
@click.option("--if-empty", is_flag=True, help="Do nothing when the database already has orders.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def demo_seed(customers: int, seed: int | None, skus: int, as_of, if_empty: bool, progress: bool) -> None:
    """Create a deterministic synthetic shop (about 10 order lines per customer): same seed and date, same shop."""
    from services.admin.demo import database_has_orders, seed_demo_shop
    from shared.ingest import utcnow

    config = _settings()
    if if_empty and database_has_orders(db):
        click.echo("database already has orders: demo seed skipped")
        return
    as_of = as_of or utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    summary = seed_demo_shop(db, customers=customers, seed=seed if seed is not None else config["DEMO_SEED"],
                             as_of=as_of, skus=skus, progress=progress)
    click.echo(summary.describe())


# ---- training runs ---------------------------------------------------------------------------------


@main.command("retrain")
@click.option("--if-none-published", is_flag=True, help="Only train when no run has been published yet.")
@click.option("--as-of", type=click.DateTime(), default=None, help="Score as of this time (UTC; default now).")
def retrain(if_none_published: bool, as_of) -> None:
    """Run the whole retrain now, in this process, printing each step's time."""
    from services.pipeline.retrain import RetrainInProgress, retrain_now
    from shared.runs import current_run_id

    config = _settings()
    _bind_redis(config)
    if if_none_published and current_run_id() is not None:
        click.echo(f"run {current_run_id()} is published: retrain skipped")
        return
    try:
        run = retrain_now(config, as_of=as_of)
    except RetrainInProgress as busy:
        raise click.ClickException(f"run {busy.run_id} is already under way") from busy
    for step in run.steps:
        rows = "" if step.get("rows") is None else f"{step['rows']:>10} rows"
        click.echo(f"  {step['name']:<24} {step['status']:<10} {step['seconds']:>8.2f} s {rows}")
    click.echo(f"run {run.run_id}: {run.status}{' (' + run.reason + ')' if run.reason else ''}")
    if run.status not in ("published",):
        sys.exit(1)


def _bind_redis(config: dict) -> None:
    """Bind Redis for commands that need it (the default address when REDIS_URL is unset)."""
    from shared.extensions import redis_store
    from shared.web import DEFAULT_REDIS_URL

    config["REDIS_URL"] = config["REDIS_URL"] or DEFAULT_REDIS_URL
    redis_store.configure(config["REDIS_URL"], config["REDIS_PREFIX"], socket_timeout=5.0)


@main.group("runs")
def runs_group() -> None:
    """Training runs."""


@runs_group.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of runs, newest first.")
def runs_list(limit: int, as_json: bool) -> None:
    """Newest runs first."""
    from shared.runs import current_run_id, list_runs

    _settings()
    current = current_run_id()
    runs = list_runs(limit)
    if as_json:
        click.echo(json.dumps([
            {"run_id": run.run_id, "status": run.status, "current": run.run_id == current, "trigger": run.trigger,
             "reason": run.reason, "as_of": _iso(run.as_of), "created_at": _iso(run.created_at),
             "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
             "published_at": _iso(run.published_at)}
            for run in runs
        ], indent=2))
        return
    for run in runs:
        marker = "*" if run.run_id == current else " "
        click.echo(f"{marker} {run.run_id}  {run.status:<10} {run.trigger:<9} {run.reason or ''}")


@runs_group.command("rollback")
def runs_rollback() -> None:
    """Make the previous published run current again."""
    from services.recommend.training import publish_version
    from shared.errors import DomainError
    from shared.runs import rollback

    config = _settings()
    _bind_redis(config)
    try:
        from_run, to_run = rollback()
    except DomainError as error:
        raise click.ClickException(error.message) from error
    publish_version(to_run)
    click.echo(f"current run is now {to_run} (was {from_run})")


@main.command("bootstrap")
def bootstrap() -> None:
    """First start of a deployment: an admin key if none is active (printed once), the first retrain if
    nothing is published and orders exist. Safe to run at every start."""
    from services.admin.bootstrap import ensure_admin_key, has_orders
    from services.pipeline.retrain import RetrainInProgress, retrain_now
    from shared.runs import current_run_id

    config = _settings()
    _bind_redis(config)
    outcome = ensure_admin_key(db)
    if outcome.created:
        click.echo(f"created admin key {outcome.key_id} 'bootstrap-admin'; store it now, it is not shown again:")
        click.echo(outcome.raw_key)
    else:
        click.echo(f"an active admin key exists (id {outcome.key_id}): none created")
    if current_run_id() is not None:
        click.echo(f"run {current_run_id()} is published: first retrain not needed")
        return
    if not has_orders(db):
        click.echo("no orders yet: first retrain skipped (import history, then POST /v1/runs or `segrec retrain`)")
        return
    try:
        run = retrain_now(config)
    except RetrainInProgress as busy:
        click.echo(f"run {busy.run_id} is already under way")
        return
    click.echo(f"first retrain: run {run.run_id} {run.status}{' (' + run.reason + ')' if run.reason else ''}")
    if run.status != "published":
        sys.exit(1)


@main.command("run")
@click.option("--segmentation-port", default=8001, show_default=True)
@click.option("--recommend-port", default=8002, show_default=True)
@click.option("--demo-customers", default=2000, show_default=True)
def run_command(segmentation_port: int, recommend_port: int, demo_customers: int) -> None:
    """The whole stack for local use: Redis, migrations, demo shop, training, both APIs, worker and beat."""
    from services.admin.stack import run_stack

    sys.exit(run_stack(segmentation_port, recommend_port, demo_customers))

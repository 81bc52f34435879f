"""The retrain workflow on real Celery worker processes, and the faults it must survive.

Each test starts its own prefork worker on a queue of its own, bound to the test's database, Redis
and key prefix, and triggers runs as production does (POST /v1/runs, or the beat's task). The faults
are real: a pool process SIGKILLed mid-run, a whole worker killed, a Redis server restarted, the
database cut off behind a TCP proxy, concurrent triggers. Nothing is eager or mocked.

SQLite gets one smoke test (the fault cases need a server to cut off, and CI runs them on
PostgreSQL); every other worker test is PostgreSQL-only and says so when it skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from services.pipeline import retrain
from shared import runs
from shared.extensions import db, redis_store
from shared.models import CustomerScore, RecommendationList
from shared.redis_server import EmbeddedRedis
from tests.factories import AS_OF, add_orders, small_shop

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")
ENDED = ("published", "rejected", "failed")
RUN_TIMEOUT = 60
# Small shards so even a small shop fans out into several scoring tasks.
SHARD_SIZE = 40
DEMO_SHARD_SIZE = 250
# The run's steps in the order they started; the line shards (train_lines_001 ...) follow train_lines, the
# for-you shards (train_for_you_001 ...) train_for_you. The customer-model fit runs beside the line shards.
STEP_NAMES = ["snapshot", "train_lines", "fit_customer_models", "score_customers", "train_models", "train_bundles",
              "train_for_you", "publish"]
SHARD_STEP = "train_for_you_"
LINES_SHARD_STEP = "train_lines_"


def main_step_names(steps) -> list[str]:
    """The run's step names without the shards', train_bundles right after train_models.

    The two are tasks of one group, taken by two worker processes at the same moment: either may record its
    start first.
    """
    names = [name for name in steps if not name.startswith((SHARD_STEP, LINES_SHARD_STEP))]
    if "train_bundles" in names and "train_models" in names:
        names.remove("train_bundles")
        names.insert(names.index("train_models") + 1, "train_bundles")
    return names

WORKER_TESTS_ON_POSTGRES = ("worker fault tests run on PostgreSQL only (CI has it), to keep this file within "
                            "three minutes; SQLite runs the smoke test on workers")
PROXY_ON_POSTGRES = ("the outage is staged by cutting a TCP proxy in front of the PostgreSQL server; "
                     "SQLite has no server")


def postgres_only(database_url: str, reason: str = WORKER_TESTS_ON_POSTGRES) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip(f"PostgreSQL only: {reason}")


# ---- real worker processes ---------------------------------------------------------------------


class Workers:
    """One `celery worker` process with a prefork pool, consuming the test's queue; its log is JSON lines."""

    def __init__(self, settings: dict, log_path: Path, concurrency: int = 2) -> None:
        self.settings = settings
        self.log_path = log_path
        self.concurrency = concurrency
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Workers:
        env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
        env.update({key: str(value) for key, value in self.settings.items()})
        command = [
            str(CELERY), "-A", "services.pipeline.worker", "worker", "--pool", "prefork",
            "--concurrency", str(self.concurrency), "-Q", self.settings["CELERY_QUEUE"],
            "--without-heartbeat", "--without-mingle", "--without-gossip",
            "-n", f"w-{uuid.uuid4().hex[:8]}@%h", "--loglevel", "INFO",
        ]
        log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited with {self.process.returncode}:\n{self.log_tail()}")
            if "ready." in self.log_text() and len(self.pool_processes()) >= self.concurrency:
                return self
            time.sleep(0.1)
        raise AssertionError(f"the worker was not ready in {timeout} s:\n{self.log_tail()}")

    def pool_processes(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the worker and its pool at once: no warm shutdown, nothing acknowledged."""
        for process in [*self.pool_processes(), psutil.Process(self.process.pid)]:
            process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        children = self.pool_processes()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for child in children:
            if child.is_running():
                child.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records


class PausableProxy:
    """A TCP proxy in front of PostgreSQL that a test can cut: open connections drop, new ones are closed at once."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port: int | None = None
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> PausableProxy:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader, writer) -> None:
        if self.cut:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, upstream_writer})
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def cut_off(self) -> None:
        """Drop every open connection and refuse new ones until `restore`."""

        def drop() -> None:
            self.cut = True
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()

        self.loop.call_soon_threadsafe(drop)

    def restore(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "cut", False)

    def stop(self) -> None:
        self.cut_off()
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def queue() -> str:
    return f"segrec-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(app_config, queue) -> dict:
    """What the test's app and its workers share: database, Redis, key prefix, queue, fast retries."""
    return {
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "REDIS_PREFIX": app_config["REDIS_PREFIX"],
        "VAR_DIR": app_config["VAR_DIR"],
        "CELERY_QUEUE": queue,
        "SCORING_SHARD_SIZE": SHARD_SIZE,
        "RETRAIN_RETRY_BACKOFF_MAX": 2,
        "RETRAIN_MAX_RETRIES": 10,
    }


@pytest.fixture
def start_workers(settings, tmp_path):
    """Start worker processes with the test's settings (plus overrides); all are stopped afterwards."""
    started: list[Workers] = []

    def start(concurrency: int = 2, **overrides) -> Workers:
        workers = Workers({**settings, **overrides}, tmp_path / f"worker-{len(started)}.log", concurrency)
        started.append(workers)
        return workers.start()

    yield start
    for workers in started:
        workers.stop()


@pytest.fixture
def make_app(app_config, settings):
    """The segmentation app with the test's settings (plus overrides), so POST /v1/runs reaches its workers."""
    from services.segmentation.app import create_app

    def make(**overrides):
        return create_app({**app_config, **settings, **overrides})

    return make


def start_run(client, admin) -> str:
    """POST /v1/runs: a new run (202) whose id is returned."""
    response = client.post("/v1/runs", headers=admin)
    assert response.status_code == 202, response.json
    return response.json["run_id"]


def wait_for_run(run_id: str, workers: Workers, timeout: float = RUN_TIMEOUT, client=None, headers=None):
    """Poll a run (through GET /v1/runs/{id} when a client is given) until it has ended."""
    deadline = time.monotonic() + timeout
    while True:
        if client is not None:
            run = client.get(f"/v1/runs/{run_id}", headers=headers).json
            status = run["status"]
        else:
            run = runs.get_run(run_id)
            status = run.status
        if status in ENDED:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is still {status} after {timeout} s; steps "
                                 f"{runs.get_run(run_id).steps}\nworker log:\n{workers.log_tail()}")
        time.sleep(0.2)


def wait_for_step(run_id: str, name: str, statuses=("running",), timeout: float = RUN_TIMEOUT,
                  poll_seconds: float = 0.05) -> None:
    """Poll until a run's step is in one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = runs.get_run(run_id)
        if any(step["name"] == name and step["status"] in statuses for step in run.steps):
            return
        if run.status in ENDED:
            raise AssertionError(f"run {run_id} ended ({run.status}, {run.reason}) before step {name} was {statuses}")
        time.sleep(poll_seconds)
    raise AssertionError(f"step {name} of run {run_id} was not {statuses} within {timeout} s")


def step_process(run_id: str, name: str) -> psutil.Process:
    """The process a running step recorded as running it (detail "process": host:pid)."""
    step = next(step for step in runs.get_run(run_id).steps if step["name"] == name)
    return psutil.Process(int(step["detail"]["process"].rsplit(":", 1)[1]))


def wait_for_log(workers: Workers, matches, timeout: float = 10) -> dict:
    """The first JSON log record of the worker that `matches` (log lines may follow the database write)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next((record for record in workers.log_records() if matches(record)), None)
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no matching log record within {timeout} s:\n{workers.log_tail()}")


def score_rows(run_id: str) -> int:
    with db.session() as session:
        return session.execute(select(func.count()).select_from(CustomerScore)
                               .where(CustomerScore.run_id == run_id)).scalar_one()


def customer_count() -> int:
    from shared.models import Customer

    with db.session() as session:
        return session.execute(select(func.count()).select_from(Customer)).scalar_one()


def recommendation_pointer() -> str | None:
    from services.recommend.store import VERSION_POINTER

    value = redis_store.client.get(redis_store.key(*VERSION_POINTER))
    return value.decode() if value is not None else None


def assert_serving_is_whole() -> str | None:
    """The current run is published with every customer's score row, and Redis serves the same version."""
    current = runs.current_run_id()
    if current is None:
        assert recommendation_pointer() is None
        return None
    run = runs.get_run(current)
    assert run.status == "published"
    assert score_rows(current) == customer_count() == run.metrics["segments"]["customers_scored"]
    # The Redis pointer flips right after the database commit: give it a moment to follow.
    deadline = time.monotonic() + 10
    while recommendation_pointer() != current and time.monotonic() < deadline:
        time.sleep(0.1)
    assert recommendation_pointer() == current
    return current


def assert_ended_cleanly(run, timeout: float = 10.0) -> None:
    """A run ended: published, or failed/rejected with its reason; either way the lock is freed.

    The run record ends (in the database) just before the lock is released (in Redis), so the lock is
    given a few seconds to follow rather than being read in the same instant.
    """
    assert run.status in ENDED
    if run.status != "published":
        assert run.reason, f"run {run.run_id} ended {run.status} without a reason"
    assert_lock_freed(timeout)


def assert_lock_freed(timeout: float = 10.0) -> None:
    """The run lock is released within `timeout` seconds of the run's end (it follows the database flip)."""
    deadline = time.monotonic() + timeout
    while runs.RunLock(3600).holder() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runs.RunLock(3600).holder() is None


def demo_shop(customers: int = 3000):
    """The demo shop (about 10 order lines per customer), written with the bulk helpers."""
    from services.admin.demo import seed_demo_shop

    return seed_demo_shop(db, customers=customers, progress=False)


# ---- the workflow on workers -----------------------------------------------------------------------


def test_run_on_workers_publishes_with_history_metrics_and_logs(database_url, make_app, admin, start_workers):
    small_shop()
    workers = start_workers()
    app = make_app()
    client = app.test_client()

    run_id = start_run(client, admin)
    run = wait_for_run(run_id, workers, client=client, headers=admin)

    assert run["status"] == "published", run["reason"]
    assert run["current"] is True
    steps = {step["name"]: step for step in run["steps"]}
    assert main_step_names(steps) == STEP_NAMES
    assert all(step["status"] == "succeeded" and step["seconds"] >= 0 for step in steps.values())
    assert steps["score_customers"]["rows"] == 120
    assert steps["score_customers"]["detail"]["shards"] == 3
    # Training's map step: each line shard is a step of its own, with its seconds, lines and range, and
    # train_models joins every line they read.
    line_steps = [step for name, step in steps.items() if name.startswith(LINES_SHARD_STEP)]
    assert sorted(step["name"] for step in line_steps) == ["train_lines_001", "train_lines_002", "train_lines_003"]
    assert all(step["rows"] > 0 and "low" in step["detail"] for step in line_steps)
    assert steps["train_lines"]["detail"]["shards"] == 3
    assert steps["train_models"]["rows"] == steps["train_lines"]["rows"] == sum(step["rows"] for step in line_steps)
    assert steps["train_models"]["rows"] > 0
    # The bundles are built beside train_models, from the same line shards.
    assert steps["train_bundles"]["detail"]["order_lines"] == steps["train_models"]["rows"]
    # Each for-you shard is a step of its own, with its seconds, customers and range.
    shard_steps = [step for name, step in steps.items() if name.startswith(SHARD_STEP)]
    assert sorted(step["name"] for step in shard_steps) == ["train_for_you_001", "train_for_you_002",
                                                           "train_for_you_003"]
    assert all(step["rows"] > 0 and "low" in step["detail"] for step in shard_steps)
    assert steps["train_for_you"]["detail"]["shards"] == 3
    assert steps["train_for_you"]["rows"] == sum(step["rows"] for step in shard_steps)
    assert run["metrics"]["recommendations"]["customers"] == steps["train_for_you"]["rows"]
    assert run["metrics"]["segments"]["customers_scored"] == 120
    assert "hr_at_10" in run["metrics"]["recommendations"]["evaluation"]
    assert assert_serving_is_whole() == run_id
    assert_lock_freed()
    listed = client.get("/v1/runs", headers=admin).json["items"]
    assert [item["run_id"] for item in listed] == [run_id]

    metrics = client.get("/metrics").get_data(as_text=True)
    age = next(line for line in metrics.splitlines() if line.startswith("segrec_current_model_age_seconds "))
    assert 0 <= float(age.split()[1]) < 120
    assert 'segrec_run_duration_seconds_count{status="published"} 1.0' in metrics

    # Structured logs: JSON lines from the pool processes, carrying the run id, one per step and shard.
    records = [record for record in workers.log_records() if record.get("run_id") == run_id]
    finished_steps = {record["step"] for record in records if record["message"] == "step finished"}
    assert finished_steps == set(steps) - {"publish"}
    assert sum(record["message"] == "shard scored" for record in records) == 3
    assert sum(record["message"] == "for-you shard trained" for record in records) == 3
    wait_for_log(workers, lambda record: record["message"] == "run published" and record.get("run_id") == run_id)
    assert all(record.get("task", "").startswith("segrec.retrain.") for record in records
               if record["message"] == "shard scored")


def test_killed_pool_process_mid_run_resumes_or_fails_and_the_next_run_publishes(
        database_url, make_app, admin, start_workers):
    postgres_only(database_url)
    demo_shop()
    workers = start_workers(SCORING_SHARD_SIZE=DEMO_SHARD_SIZE)
    client = make_app().test_client()

    run_id = start_run(client, admin)
    wait_for_step(run_id, "train_models")
    # Kill the process the train_models step says runs it.
    victim = step_process(run_id, "train_models")
    assert victim in workers.pool_processes()
    victim.send_signal(signal.SIGKILL)

    run = wait_for_run(run_id, workers)
    assert_ended_cleanly(run)
    # acks_late + reject_on_worker_lost: the killed task is redelivered to a fresh pool process.
    assert run.status == "published", run.reason
    assert not victim.is_running()
    received = [record for record in workers.log_records()
                if record["message"].startswith("Task segrec.retrain.train_models[")
                and record["message"].endswith("received")]
    assert len(received) == 2, "the SIGKILL did not hit the training task"
    assert len(workers.pool_processes()) == 2
    assert assert_serving_is_whole() == run_id

    following = wait_for_run(start_run(client, admin), workers)
    assert following.status == "published", following.reason
    assert assert_serving_is_whole() == following.run_id


def test_whole_worker_killed_leaves_a_stale_run_that_the_next_trigger_takes_over(
        database_url, make_app, admin, start_workers):
    postgres_only(database_url)
    small_shop()
    workers = start_workers(RETRAIN_STALE_SECONDS=3)
    client = make_app(RETRAIN_STALE_SECONDS=3).test_client()
    first = wait_for_run(start_run(client, admin), workers)
    assert first.status == "published"

    # Kill the whole worker while the run is under way: its unacknowledged tasks wait in Redis
    # for the visibility timeout (40 minutes), and the run holds the lock without making progress.
    stale_id = start_run(client, admin)
    wait_for_step(stale_id, "fit_customer_models", statuses=("running", "succeeded"))
    workers.kill()
    assert runs.get_run(stale_id).status == "running"
    busy = client.post("/v1/runs", headers=admin)
    assert busy.status_code == 200 and busy.json["run_id"] == stale_id

    time.sleep(3.5)
    # The trigger comes before the replacement worker: a worker started first may run one of the stale run's
    # tasks still waiting in the queue, and that task's step is a sign of life that makes the run look alive.
    new_id = start_run(client, admin)
    replacement = start_workers(RETRAIN_STALE_SECONDS=3)
    stale = runs.get_run(stale_id)
    assert stale.status == "failed"
    assert "no progress" in stale.reason and new_id in stale.reason
    assert all(step["status"] != "running" for step in stale.steps)
    assert runs.current_run_id() == first.run_id

    new = wait_for_run(new_id, replacement)
    assert new.status == "published", new.reason
    assert assert_serving_is_whole() == new_id


def test_redis_restarted_during_a_run(database_url, make_app, admin, start_workers, tmp_path):
    postgres_only(database_url)
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        demo_shop()
        overrides = {"REDIS_URL": server.url, "SCORING_SHARD_SIZE": DEMO_SHARD_SIZE}
        workers = start_workers(**overrides)
        client = make_app(REDIS_URL=server.url).test_client()

        run_id = start_run(client, admin)
        wait_for_step(run_id, "train_models")
        # SIGTERM: redis-server saves its data set (queues, unacked messages, chord counters, the lock)
        # and exits; it comes back on the same port with it.
        server.stop()
        time.sleep(1.0)
        server.start()

        # celery 5.7.0 / kombu 5.7.0 stop the worker ("Unrecoverable error: AttributeError ... hostname")
        # when the broker connection drops while an acks-late task runs. Production restarts the worker
        # (deploy/docker-compose.yml: restart: unless-stopped); so does this loop, like a supervisor.
        restarts = 0
        deadline = time.monotonic() + 60
        while runs.get_run(run_id).status not in ENDED and time.monotonic() < deadline:
            if workers.process.poll() is not None:
                workers = start_workers(**overrides)
                restarts += 1
            time.sleep(0.2)
        run = wait_for_run(run_id, workers, timeout=1)
        assert_ended_cleanly(run)
        assert run.status == "published", run.reason
        assert assert_serving_is_whole() == run_id
        assert restarts <= 1

        following = wait_for_run(start_run(client, admin), workers)
        assert following.status == "published", following.reason
        assert assert_serving_is_whole() == following.run_id
    finally:
        server.stop()


@pytest.fixture
def proxy(database_url):
    """A cuttable TCP proxy to the test's PostgreSQL server."""
    url = make_url(database_url)
    proxy = PausableProxy(url.host or "127.0.0.1", url.port or 5432).start()
    yield proxy
    proxy.stop()


def through(proxy: PausableProxy, database_url: str) -> str:
    return make_url(database_url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def test_database_unreachable_for_seconds_is_ridden_out_by_retries(database_url, make_app, admin, start_workers,
                                                                  request):
    postgres_only(database_url, PROXY_ON_POSTGRES)
    proxy = request.getfixturevalue("proxy")
    demo_shop()
    workers = start_workers(DATABASE_URL=through(proxy, database_url), SCORING_SHARD_SIZE=DEMO_SHARD_SIZE)
    client = make_app().test_client()

    run_id = start_run(client, admin)
    wait_for_step(run_id, "fit_customer_models", statuses=("succeeded",))
    proxy.cut_off()
    time.sleep(4)
    proxy.restore()

    run = wait_for_run(run_id, workers, timeout=90)
    assert run.status == "published", run.reason
    assert assert_serving_is_whole() == run_id
    retries = [record for record in workers.log_records()
               if record["message"] == "transient error; retrying" and record.get("run_id") == run_id]
    assert retries, workers.log_tail()


def test_database_outage_beyond_the_retries_fails_the_run_through_the_error_callback(
        database_url, make_app, admin, start_workers, request):
    postgres_only(database_url, PROXY_ON_POSTGRES)
    proxy = request.getfixturevalue("proxy")
    demo_shop()
    # No retries: the first task to lose the database fails, after `prepare` replaced itself with the chord.
    workers = start_workers(DATABASE_URL=through(proxy, database_url), SCORING_SHARD_SIZE=100,
                            RETRAIN_MAX_RETRIES=0)
    client = make_app().test_client()

    run_id = start_run(client, admin)
    wait_for_step(run_id, "score_customers")
    proxy.cut_off()
    time.sleep(3)
    proxy.restore()

    run = wait_for_run(run_id, workers)
    assert run.status == "failed"
    assert "OperationalError" in run.reason or "connection" in run.reason.lower(), run.reason
    # The error callback linked to `prepare` reached the tasks that replaced it (chord header and body).
    callbacks = [record for record in workers.log_records()
                 if record["message"].startswith("Task segrec.retrain.mark_failed[")
                 and "succeeded" in record["message"]]
    assert callbacks, workers.log_tail()
    assert_ended_cleanly(run)
    assert assert_serving_is_whole() is None

    following = wait_for_run(start_run(client, admin), workers)
    assert following.status == "published", following.reason
    assert assert_serving_is_whole() == following.run_id


def test_concurrent_triggers_start_one_run(database_url, make_app, admin, start_workers):
    postgres_only(database_url)
    from services.pipeline.tasks import start_retrain

    small_shop()
    workers = start_workers()
    app = make_app()

    def post() -> tuple[int, str]:
        response = app.test_client().post("/v1/runs", headers=admin)
        return response.status_code, response.json["run_id"]

    # Two API calls in this process and two beat tasks in the worker's two pool processes, all at once.
    with ThreadPoolExecutor(max_workers=4) as pool:
        beat = [start_retrain.apply_async(kwargs={"trigger": "schedule"}) for _ in range(2)]
        answers = list(pool.map(lambda _: post(), range(2)))
    run_ids = {run_id for _status, run_id in answers} | {result.get(timeout=30) for result in beat}
    assert len(run_ids) == 1, run_ids
    run_id = run_ids.pop()
    assert sorted(status for status, _ in answers) in ([200, 200], [200, 202])

    run = wait_for_run(run_id, workers)
    assert run.status == "published", run.reason
    others = [other for other in runs.list_runs() if other.run_id != run_id]
    assert len(others) == 3
    assert all(other.status == "rejected" and run_id in other.reason for other in others)
    assert assert_serving_is_whole() == run_id


def test_empty_shop_publishes_an_empty_run(database_url, make_app, admin, start_workers):
    postgres_only(database_url)
    workers = start_workers()
    client = make_app().test_client()

    run = wait_for_run(start_run(client, admin), workers)
    assert run.status == "published", run.reason
    steps = {step["name"]: step for step in run.steps}
    assert main_step_names(steps) == STEP_NAMES
    assert steps["score_customers"]["rows"] == 0 and steps["score_customers"]["detail"]["shards"] == 0
    assert steps["train_for_you"]["rows"] == 0 and steps["train_for_you"]["detail"]["shards"] == 0
    assert run.metrics["segments"]["customers_scored"] == 0
    assert assert_serving_is_whole() == run.run_id


def test_unchanged_data_gives_the_same_result(database_url, make_app, start_workers):
    postgres_only(database_url)
    from services.pipeline.tasks import start_retrain

    small_shop()
    workers = start_workers()
    make_app()

    def beat_run():
        run_id = start_retrain.apply_async(kwargs={"trigger": "test", "as_of": AS_OF.isoformat()}).get(timeout=30)
        return wait_for_run(run_id, workers)

    # The first run trains its per-tier popular lists without a published tier assignment; from the
    # second run on, every input is the same, and so is every output.
    first, second, third = beat_run(), beat_run(), beat_run()
    assert [run.status for run in (first, second, third)] == ["published"] * 3, [first.reason, second.reason,
                                                                                third.reason]
    assert len({first.run_id, second.run_id, third.run_id}) == 3
    assert scores_of(first.run_id) == scores_of(second.run_id) == scores_of(third.run_id)
    assert_same_lists(recommendation_lists_of(second.run_id), recommendation_lists_of(third.run_id))
    assert second.metrics["recommendations"]["evaluation"] == third.metrics["recommendations"]["evaluation"]
    assert second.metrics["segments"] == third.metrics["segments"]
    assert assert_serving_is_whole() == third.run_id


def beat_run(workers: Workers, as_of) -> runs.Run:
    """A run started as the beat starts it (with a fixed as_of), waited for until it ends."""
    from services.pipeline.tasks import start_retrain

    run_id = start_retrain.apply_async(kwargs={"trigger": "test", "as_of": as_of.isoformat()}).get(timeout=30)
    return wait_for_run(run_id, workers)


def test_celery_and_in_process_runs_publish_the_same_lists_whatever_the_shards(database_url, make_app,
                                                                                start_workers):
    postgres_only(database_url)
    small_shop()
    app = make_app()
    # The first run has no published tiers to train next to; from the second on, every input is the same.
    assert retrain.retrain_now(app.config, as_of=AS_OF).status == "published"
    in_process = retrain.retrain_now({**app.config, "TRAINING_SHARD_SIZE": 10_000}, as_of=AS_OF)
    assert in_process.status == "published", in_process.reason
    assert [step["name"] for step in in_process.steps if step["name"].startswith(SHARD_STEP)] == [
        "train_for_you_001"]

    on_workers = beat_run(start_workers(), AS_OF)
    assert on_workers.status == "published", on_workers.reason
    assert len([step for step in on_workers.steps if step["name"].startswith(SHARD_STEP)]) == 3

    assert_same_lists(recommendation_lists_of(in_process.run_id), recommendation_lists_of(on_workers.run_id))
    one_shard, three_shards = customer_lists_of(in_process.run_id), customer_lists_of(on_workers.run_id)
    assert len(one_shard) == in_process.metrics["recommendations"]["customers"] > 0
    assert one_shard == three_shards


@pytest.mark.parametrize("shard_step, task", [("train_lines_002", "train_line_shard"),
                                              ("train_for_you_002", "train_for_you_shard")])
def test_killed_pool_process_during_a_training_shard_publishes_the_undisturbed_lists(
        database_url, make_app, start_workers, shard_step, task):
    postgres_only(database_url)
    from shared.ingest import utcnow

    demo_shop()
    # One pool process: the one running the shard is the one killed.
    workers = start_workers(concurrency=1, SCORING_SHARD_SIZE=DEMO_SHARD_SIZE, TRAINING_SHARD_SIZE=1000)
    make_app()
    as_of = utcnow().replace(microsecond=0)
    assert beat_run(workers, as_of).status == "published"

    from services.pipeline.tasks import start_retrain

    disturbed_id = start_retrain.apply_async(kwargs={"trigger": "test", "as_of": as_of.isoformat()}).get(timeout=30)
    # A line shard reads its customers' lines in a fraction of a second: poll often enough to catch it running.
    wait_for_step(disturbed_id, shard_step, poll_seconds=0.005)
    victim = workers.pool_processes()[0]
    victim.send_signal(signal.SIGKILL)
    disturbed = wait_for_run(disturbed_id, workers)
    assert_ended_cleanly(disturbed)
    assert disturbed.status == "published", disturbed.reason
    received = [record["message"] for record in workers.log_records()
                if record["message"].startswith(f"Task segrec.retrain.{task}[") and record["message"].endswith("received")]
    assert len(received) > len(set(received)), f"the SIGKILL did not hit a {task}"

    undisturbed = beat_run(workers, as_of)
    assert undisturbed.status == "published", undisturbed.reason
    # Nothing counted twice: the redelivered shard rewrote its own key or customers, once.
    steps = [{step["name"]: (step["status"], step["rows"]) for step in run.steps} for run in (disturbed, undisturbed)]
    for fan_out in ("train_lines", "train_models", "train_for_you"):
        assert steps[0][fan_out] == steps[1][fan_out]
    assert {name: value for name, value in steps[0].items() if name.startswith((SHARD_STEP, LINES_SHARD_STEP))} == {
        name: value for name, value in steps[1].items() if name.startswith((SHARD_STEP, LINES_SHARD_STEP))}
    assert_same_lists(recommendation_lists_of(disturbed.run_id), recommendation_lists_of(undisturbed.run_id))
    disturbed_lists = customer_lists_of(disturbed.run_id)
    assert len(disturbed_lists) == disturbed.metrics["recommendations"]["customers"] > 0
    assert disturbed_lists == customer_lists_of(undisturbed.run_id)


def customer_lists_of(version: str) -> dict[bytes, bytes]:
    """Every customer's packed lists in a version (all the hash buckets in Redis)."""
    from services.recommend.store import CUSTOMER_BUCKETS, list_key

    pipeline = redis_store.client.pipeline(transaction=False)
    for bucket in range(CUSTOMER_BUCKETS):
        pipeline.hgetall(list_key(version, "cust", str(bucket)))
    lists: dict[bytes, bytes] = {}
    for fields in pipeline.execute():
        lists.update(fields)
    return lists


def assert_same_lists(left: list[tuple], right: list[tuple]) -> None:
    """Equal recommendation lists; on a difference, name the list and the JSON keys that differ."""
    assert [row[:2] for row in left] == [row[:2] for row in right]
    for (kind, key, left_payload), (_kind, _key, right_payload) in zip(left, right):
        if left_payload != right_payload:
            left_value, right_value = json.loads(left_payload), json.loads(right_payload)
            if isinstance(left_value, dict):
                differing = sorted(name for name in left_value if left_value[name] != right_value.get(name))
                raise AssertionError(f"{kind}:{key} differs in {differing}")
            raise AssertionError(f"{kind}:{key} differs: {left_payload[:200]} != {right_payload[:200]}")


def scores_of(run_id: str) -> list[tuple]:
    columns = [column for column in CustomerScore.__table__.columns if column.name != "run_id"]
    with db.session() as session:
        return [tuple(row) for row in session.execute(
            select(*columns).where(CustomerScore.run_id == run_id).order_by(CustomerScore.customer_id))]


def recommendation_lists_of(version: str) -> list[tuple]:
    with db.session() as session:
        return [tuple(row) for row in session.execute(
            select(RecommendationList.kind, RecommendationList.list_key, RecommendationList.payload)
            .where(RecommendationList.model_version == version)
            .order_by(RecommendationList.kind, RecommendationList.list_key))]


# ---- the lock and rollback, in this process (both databases) ---------------------------------------


@pytest.fixture
def bound_config(database_url, app_config):
    """Settings for calling the retrain functions in this process, with Redis bound to the test's prefix."""
    from shared.config import load_config

    redis_store.configure(app_config["REDIS_URL"], app_config["REDIS_PREFIX"], socket_timeout=5.0)
    return load_config(app_config)


def test_lock_held_by_a_live_run_turns_triggers_away(bound_config):
    config = bound_config
    live = retrain.begin_run(config, AS_OF)
    with pytest.raises(retrain.RetrainInProgress) as busy:
        retrain.begin_run(config, AS_OF)
    assert busy.value.run_id == live.run_id
    turned_away = [run for run in runs.list_runs() if run.run_id != live.run_id]
    assert [(run.status, run.reason) for run in turned_away] == [
        ("rejected", f"run {live.run_id} was already under way")]


def test_lock_of_an_ended_or_silent_run_is_taken_over(bound_config):
    config = {**bound_config, "RETRAIN_STALE_SECONDS": 1}
    # The holder's worker recorded the failure but died before releasing the lock.
    ended = retrain.begin_run(config, AS_OF)
    runs.finish_run(ended.run_id, "failed", "worker died")
    second = retrain.begin_run(config, AS_OF)
    assert runs.RunLock(3600).holder() == second.run_id
    assert runs.get_run(ended.run_id).reason == "worker died"

    # The holder's worker died mid-step: nothing happens for longer than RETRAIN_STALE_SECONDS.
    runs.start_step(second.run_id, "fit_customer_models")
    time.sleep(1.3)
    third = retrain.begin_run(config, AS_OF)
    silent = runs.get_run(second.run_id)
    assert silent.status == "failed" and "no progress" in silent.reason and third.run_id in silent.reason
    assert silent.steps[0]["status"] == "failed"
    assert runs.RunLock(3600).holder() == third.run_id
    # A run that lost its lock stops at its next task instead of writing alongside the new run.
    assert retrain.still_running(second.run_id, config) is False
    assert retrain.still_running(third.run_id, config) is True


def test_rollback_command_flips_the_database_and_recommendation_pointers(database_url, segmentation_app,
                                                                         app_config):
    from services.admin.cli import main

    small_shop()
    first = retrain.retrain_now(segmentation_app.config, as_of=AS_OF)
    add_orders([{"order_id": f"late-{n}", "customer_id": f"c{n:04d}", "placed_at": AS_OF, "skus": ["TEA-1"]}
                for n in range(10)])
    second = retrain.retrain_now(segmentation_app.config, as_of=AS_OF.replace(hour=13))
    assert (first.status, second.status) == ("published", "published")
    assert (runs.current_run_id(), recommendation_pointer()) == (second.run_id, second.run_id)

    env = {"DATABASE_URL": database_url, "REDIS_URL": app_config["REDIS_URL"],
           "REDIS_PREFIX": app_config["REDIS_PREFIX"]}
    result = CliRunner().invoke(main, ["runs", "rollback"], env=env)

    assert result.exit_code == 0, result.output
    assert f"current run is now {first.run_id}" in result.output
    assert (runs.current_run_id(), recommendation_pointer()) == (first.run_id, first.run_id)
    assert runs.get_run(second.run_id).status == "rejected"
    assert score_rows(first.run_id) == 120
    # Rolling back again returns to the newer run.
    again = CliRunner().invoke(main, ["runs", "rollback"], env=env)
    assert again.exit_code == 0, again.output
    assert (runs.current_run_id(), recommendation_pointer()) == (second.run_id, second.run_id)

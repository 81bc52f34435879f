"""gunicorn settings for both APIs: `gunicorn -c deploy/gunicorn.conf.py 'services.recommend.app:create_app()'`.

Every value can be overridden from the environment so one file serves development and production.
"""

import os
import shutil

# numpy's BLAS thread pools would spin in every worker and fight over the cores; the web tier's
# numpy work is small per request, so one thread each is faster.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8002")
# Serving is short CPU work (lists are cached in the worker), so one single-threaded process per core
# measured best: threads add GIL contention and long latency tails (tests/perf/bench_serving.py:
# 2x1 gave p99 15 ms for bought-together where 4x4 gave 58 ms on this 2-core machine).
# Two unless told: a container sees the host's cores, not its own limit, so a core count would overshoot.
workers = int(os.environ.get("GUNICORN_WORKERS", 2))
threads = int(os.environ.get("GUNICORN_THREADS", 1))
worker_class = "gthread" if threads > 1 else "sync"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 60))
graceful_timeout = 20
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
max_requests_jitter = 100
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Access and error logs as JSON lines on stdout, with the request id (shared/logs.py); the access log is on.
accesslog = "-"
errorlog = "-"
logconfig_dict = {}
try:
    from shared.logs import logging_config

    logconfig_dict = logging_config(loglevel)
except ImportError:  # run from outside the project: gunicorn's plain text logs
    pass

# gunicorn answers its own limit errors in HTML; it is set at its maximums so the apps, with tighter
# limits of their own (shared/web.py register_request_limits), answer 414/431 in JSON first.
limit_request_line = 8190
limit_request_fields = 200
limit_request_field_size = 16380
# Each worker builds its own app (and its own database pool) after the fork.
preload_app = False
# The control socket (gunicornc) defaults to one path per user, so two gunicorns of one user would
# share it: each gets its own path (GUNICORN_CONTROL_SOCKET, set by `segrec run`), else none.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def on_starting(server):
    """Empty the multiprocess metrics folder: files of a previous run would be summed into this one's."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def child_exit(server, worker):
    """A dead worker's live gauges must not be reported any more."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

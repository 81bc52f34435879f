"""Slow clients cannot starve the API workers: 20 connections sending headers at 1 byte per 0.5 s, while
/healthz and a recommendation still answer within 100 ms through the deployed path (nginx with
deploy/nginx/segrec-proxy.conf in front of gunicorn with deploy/gunicorn.conf.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from shared.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SLOW_CONNECTIONS = 20

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream recommend_api {{ server 127.0.0.1:{upstream}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        set $segrec_upstream recommend_api;
        include {repo}/deploy/nginx/segrec-proxy.conf;
    }}
}}
"""


def wait_until_answers(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=0.5)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def deployed_recommend(shop, database_url, redis_url, redis_prefix, tmp_path):
    """gunicorn (deploy/gunicorn.conf.py, 2 sync workers) behind nginx (deploy/nginx/segrec-proxy.conf)."""
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    upstream, port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix,
           "GUNICORN_WORKERS": "2", "PYTHONPATH": str(REPO)}
    gunicorn = subprocess.Popen([str(GUNICORN), "-c", str(REPO / "deploy/gunicorn.conf.py"), "--bind",
                                 f"127.0.0.1:{upstream}", "--log-level", "warning",
                                 "services.recommend.app:create_app()"], env=env, cwd=REPO)
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    conf = nginx_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=nginx_dir, upstream=upstream, port=port, repo=REPO))
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(nginx_dir)])
    try:
        wait_until_answers(f"http://127.0.0.1:{upstream}/healthz")
        wait_until_answers(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}"
    finally:
        nginx.terminate()
        gunicorn.terminate()
        nginx.wait(10)
        gunicorn.wait(30)


def dribble(port: int, stop: threading.Event) -> None:
    """Send a request's headers one byte every 0.5 s until told to stop."""
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"x" * 200
    with socket.create_connection(("127.0.0.1", port)) as connection:
        for byte in request:
            if stop.wait(0.5):
                return
            try:
                connection.send(bytes([byte]))
            except OSError:
                return


def timed_get(url: str, headers: dict | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    response = requests.get(url, headers=headers, timeout=5)
    return response.status_code, time.perf_counter() - started


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_twenty_slow_clients_do_not_starve_healthz_or_recommendations(deployed_recommend, make_key):
    storefront = make_key("recs:read")
    port = int(deployed_recommend.rsplit(":", 1)[1])
    # Warm both workers (each loads the model's lists on its first request).
    for _ in range(6):
        timed_get(f"{deployed_recommend}/v1/items/PHN-1/bought-together", storefront)
    stop = threading.Event()
    slow = [threading.Thread(target=dribble, args=(port, stop), daemon=True) for _ in range(SLOW_CONNECTIONS)]
    for thread in slow:
        thread.start()
    try:
        time.sleep(2.0)  # every slow connection is open and has sent a few bytes
        timings = []
        for _ in range(10):
            timings.append(("healthz",) + timed_get(f"{deployed_recommend}/healthz"))
            timings.append(("bought-together",) + timed_get(f"{deployed_recommend}/v1/items/PHN-1/bought-together",
                                                             storefront))
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in slow:
            thread.join(5)
    print("\n".join(f"{name}: HTTP {status} in {seconds * 1000:.1f} ms" for name, status, seconds in timings))
    assert all(status == 200 for _name, status, _seconds in timings)
    # Starved workers answer in seconds (a sync worker waits for the slow client's whole header). The median
    # is held to 100 ms, each answer to 500 ms: this shared CI machine has latency spikes of its own.
    for endpoint in ("healthz", "bought-together"):
        durations = sorted(seconds for name, _status, seconds in timings if name == endpoint)
        assert durations[len(durations) // 2] < 0.100, (endpoint, durations)
        assert durations[-1] < 0.500, (endpoint, durations)

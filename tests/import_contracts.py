"""A custom import-linter contract: one package never imports another package's private (underscored) names.

import-linter's built-in contracts see modules, not the names imported from them; this one reads the import
lines grimp records (`from services.recommend.cooccurrence import _helper`) and flags underscored names.
Configured in pyproject.toml under [tool.importlinter] (contract_types = private_names: ...).
"""

from __future__ import annotations

import re

from importlinter import Contract, ContractCheck, fields, output

IMPORTED_NAMES = re.compile(r"^\s*from\s+\S+\s+import\s+\(?(?P<names>[^)#]*)")


def private_names(line: str) -> list[str]:
    """The underscored names a `from x import a, _b` line imports (dunder names are not private)."""
    match = IMPORTED_NAMES.match(line)
    if match is None:
        return []
    names = [part.split(" as ")[0].strip() for part in match.group("names").split(",")]
    return [name for name in names if name.startswith("_") and not name.startswith("__")]


class PrivateNamesContract(Contract):
    """Modules under `packages` import no private name from a module of another listed package."""

    type_name = "private_names"

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        """Every import between two different listed packages, checked for underscored names."""
        owners = {package: {package, *graph.find_descendants(package)} for package in self.packages}
        violations = []
        for importer_package, importers in owners.items():
            for imported_package, imported_modules in owners.items():
                if importer_package == imported_package:
                    continue
                for importer in importers:
                    for imported in graph.find_modules_directly_imported_by(importer) & imported_modules:
                        for detail in graph.get_import_details(importer=importer, imported=imported):
                            for name in private_names(detail["line_contents"]):
                                violations.append(f"{importer}:{detail['line_number']} imports {imported}.{name}")
        return ContractCheck(kept=not violations, metadata={"violations": sorted(violations)})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """One line per private name imported across packages."""
        for violation in check.metadata["violations"]:
            output.print_error(violation)

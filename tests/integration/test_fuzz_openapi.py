"""schemathesis over both services' /openapi.json (in-process WSGI, all default checks, bounded examples):
no server error and no response that contradicts the document."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import FailedHealthCheck, Unsatisfiable
from schemathesis.specs.openapi.checks import positive_data_acceptance

# Acceptance of these valid-looking requests depends on more than a schema can say, so the one check that
# expects every schema-valid request to succeed (positive_data_acceptance) is left out for them alone:
# a webhook URL must resolve to a globally routable address (DNS), and a range's lower bound must not exceed
# its upper bound (a rule across two fields), a metrics period spans at most 366 days from `from` to `to`,
# and an experiment's variants need weights that leave traffic for each and dates in order. Every other
# check runs on them, and all checks on the rest.
CROSS_FIELD_RULES = {
    ("POST", "/v1/campaigns/win-back"),
    ("POST", "/v1/segments/query"),
    ("GET", "/v1/recommendations/metrics"),
    ("POST", "/v1/experiments"),
}

# Examples per operation: about 20 operations per service, so a run takes a couple of minutes on 2 cores.
EXAMPLES_PER_OPERATION = 12


def fuzz_operations(app, headers: dict) -> tuple[int, list[str]]:
    """Run every operation of the app's document; returns (operations run, failure reports)."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        excluded = []
        if (operation.method.upper(), operation.path) in CROSS_FIELD_RULES:
            excluded = [positive_data_acceptance]

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            case.call_and_validate(headers=headers, excluded_checks=excluded)

        try:
            run()
        except (FailedHealthCheck, Unsatisfiable):
            continue
        except BaseException as error:  # failed checks (an exception group): collect, fuzz the other operations
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            failures.append(f"{operation.method.upper()} {operation.path}: {error}"[:3000])
    return operations, failures


@pytest.fixture
def fuzz_config(app_config, monkeypatch):
    # The fuzzer sends hundreds of requests a minute with one key; rate limits have tests of their own.
    monkeypatch.setenv("WEBHOOK_SECRET", "fuzz-secret")
    return dict(app_config, RATE_LIMIT_ENABLED=False)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_both_documents_hold_under_fuzzing(fuzz_config, shop, make_key):
    from services.recommend.app import create_app as create_recommend
    from services.recommend.views.recommendations import recommender
    from services.segmentation.app import create_app as create_segmentation

    admin = make_key("admin", name="fuzz-admin")
    recommender.reset()
    reports = {}
    for name, factory in (("segmentation", create_segmentation), ("recommend", create_recommend)):
        operations, failures = fuzz_operations(factory(fuzz_config), admin)
        reports[name] = (operations, failures)
    recommender.reset()
    for name, (operations, failures) in reports.items():
        print(f"{name}: {operations} operations, {len(failures)} failing")
    all_failures = [failure for _ops, failures in reports.values() for failure in failures]
    assert reports["segmentation"][0] >= 10 and reports["recommend"][0] >= 5
    assert all_failures == [], "\n\n".join(all_failures)

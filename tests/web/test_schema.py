"""Schemathesis against /openapi.json: generated requests never get a 500.

The schema is the one the server serves (``create_app(...).openapi()``); every generated
request goes over HTTP to a real server with an admin token, so it reaches the handlers
rather than stopping at the 401. Examples are bounded to keep the run in seconds.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from conveyor.web.server import create_app
from tests.web.conftest import Running
from tests.web.web_tasks import make_app

_schema_app = make_app("sqlite:///unused-schema-only.db")
schema = schemathesis.openapi.from_dict(create_app(_schema_app, secret="x").openapi())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: schemathesis.Case, served: Running, tmp_path: Path) -> None:
    case.call_and_validate(
        base_url=served.base,
        headers={"Authorization": f"Bearer {served.admin}"},
        checks=[not_a_server_error, response_schema_conformance],
    )


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_for_a_tenant_token(
    case: schemathesis.Case, served: Running, tmp_path: Path
) -> None:
    """The tenant paths (403s, hidden jobs, forced tenant) hold up to generated input too."""
    case.call_and_validate(
        base_url=served.base,
        headers={"Authorization": f"Bearer {served.org7}"},
        checks=[not_a_server_error, response_schema_conformance],
    )

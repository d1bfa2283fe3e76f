"""URL handling: Conveyor's own options are stripped before libpq sees the URL."""

from __future__ import annotations

import pytest

from conveyor.backends.postgres._url import DEFAULT_SCHEMA, parse


def test_schema_option_is_stripped_and_the_rest_kept() -> None:
    url = parse("postgres://u:p@db:5433/app?schema=jobs_1&sslmode=require&options=-c%20x%3D1")
    assert url.schema == "jobs_1"
    assert url.channel == "conveyor_jobs_1"
    assert url.conninfo == "postgresql://u:p@db:5433/app?sslmode=require"
    assert url.options == "-c x=1"


def test_default_schema() -> None:
    url = parse("postgresql://db/app")
    assert (url.schema, url.conninfo, url.options) == (DEFAULT_SCHEMA, "postgresql://db/app", "")


@pytest.mark.parametrize("schema", ["Upper", "has-dash", "1digit", "x" * 51, ""])
def test_bad_schema_names_are_refused(schema: str) -> None:
    with pytest.raises(ValueError, match="invalid schema"):
        parse(f"postgresql://db/app?schema={schema}")

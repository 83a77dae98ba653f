"""Schemathesis over the whole OpenAPI document of a real `allot serve --no-controller` (so
that no fuzzed job ever runs): every operation, with valid and with invalid input, with an
administrator's token and with none. No answer may be a server error, and every answer must
match the schema the document gives for it (security issue 11, part 3).

Examples per operation are few (``EXAMPLES``), so that the whole run stays within a couple of
minutes on two cores; every failure of every operation is reported together.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.support.hub import free_port
from tests.support.process import allot_serve, clean_env

EXAMPLES = int(os.environ.get("ALLOTMENT_FUZZ_EXAMPLES", "30"))
CHECKS = [not_a_server_error, response_schema_conformance]
MODES = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real service on SQLite, and on PostgreSQL when the suite has one."""
    data = tmp_path / "data"
    env = clean_env(ALLOTMENT_DATA_DIR=str(data), ALLOTMENT_DATABASE_URL=database_url)
    port = free_port()
    with allot_serve(port, env, "--no-controller"):
        yield f"http://127.0.0.1:{port}", (data / "admin-token").read_text().strip()


def _fuzz(base: str, headers: dict[str, str]) -> list[str]:
    """Every operation, in both generation modes; the failures, one line each."""
    schema = schemathesis.openapi.from_url(f"{base}/services/allotment/api/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # A health check's 503 is its documented answer (here: no controller runs), still
        # checked against the schema.
        checks = [response_schema_conformance] if "/health" in operation.path else CHECKS
        for mode in MODES:
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                # Called in this same iteration, so the loop's `checks` is the one meant.
                case.call_and_validate(
                    base_url=base,
                    headers=headers,
                    checks=checks,  # noqa: B023
                    timeout=30,
                )

            try:
                run()
            except Unsatisfiable:
                pass  # nothing about it can be made invalid (no parameters, or only free text)
            except (Exception, BaseExceptionGroup) as e:  # every operation is tried
                first = [line for line in str(e).strip().splitlines() if line.strip()][:8]
                failures.append(f"{operation.label} ({mode.value}):\n    " + "\n    ".join(first))
    return failures


def test_no_server_error_and_every_answer_as_documented_with_an_admin_token(
    served: tuple[str, str],
) -> None:
    base, token = served
    admin = {"Authorization": f"token {token}"}
    failures = _fuzz(base, admin)
    assert not failures, "\n".join(failures)
    # `--no-controller`: whatever the fuzzing submitted is still waiting.
    r = httpx.get(
        f"{base}/services/allotment/api/workloads",
        params={"status": ["admitted", "starting", "running", "stopping"]},
        headers=admin,
    )
    assert r.status_code == 200 and r.json()["items"] == []


def test_no_server_error_and_every_answer_as_documented_without_a_token(
    served: tuple[str, str],
) -> None:
    base, _ = served
    failures = _fuzz(base, {})
    assert not failures, "\n".join(failures)

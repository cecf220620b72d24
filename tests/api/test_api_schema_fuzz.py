"""Schemathesis against the server's own OpenAPI schema, every operation, on a real server on loopback
in front of a fake upstream: generated requests (valid and invalid) never get a 500, and every
response conforms to the schema (documented status, content type, body and headers). Bounded for CI:
a few examples per operation, derandomized (the same cases every run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from api_stack import start_stack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


EXAMPLES = 6  # per operation


def test_every_operation_answers_within_its_schema(tmp_path: Path) -> None:
    """One test over every operation (the schema is read from the running server); each operation's
    cases run under Hypothesis, and the failures of all of them are reported together."""
    failures: dict[str, str] = {}
    counts: dict[str, int] = {}
    current = [""]  # the label the cases now generated count under
    with start_stack(tmp_path / "o.db", default_model="fake-model", max_upstream_calls=8) as stack:
        schema = schemathesis.openapi.from_url(stack.url + "/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in GenerationMode:  # valid requests, then requests that break the schema
                label = f"{operation.label} ({mode.value})"
                counts[label] = 0
                current[0] = label

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=EXAMPLES,
                    derandomize=True,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                    database=None,
                    phases=[Phase.explicit, Phase.generate],
                )
                def check(case: Any) -> None:
                    counts[current[0]] += 1
                    case.call_and_validate(base_url=stack.url, checks=CHECKS)

                try:
                    check()
                except Unsatisfiable:  # no request can break this operation's schema (a string path parameter)
                    assert mode is GenerationMode.NEGATIVE, label
                    del counts[label]
                except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 (collected: every operation is tried)
                    failures[label] = f"{type(exc).__name__}: {exc}"[:3000]
    print(f"schemathesis: {len(counts)} operation/mode pairs, {sum(counts.values())} requests: {counts}")
    assert sum(label.endswith("(positive)") for label in counts) >= 13  # every operation, the same cases each run
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())

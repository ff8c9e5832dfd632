"""schemathesis against the gateway's own OpenAPI schema: every operation, bodies and parameters
generated from the schema (valid and not). No response may be a server error, none may take
longer than the deadline (a hang), and every refusal has OpenAI's error shape.

Three runs: over HTTP on a real swarm with an app key (generated bodies name the served model, so
valid ones really generate; a wrong model name is covered by test_api_errors), and in process
against a gateway with a real trace store, as a contributor and as a maintainer, so the trace,
grant and erasure routes get past authorization; and statefully, in process, chaining the
operations schemathesis links (ids from real responses into the next calls). Each is bounded.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow
DEADLINE_S = 20.0
"""Longer than any bounded generation on the tiny model takes; longer means a hang."""


def strategies(operation) -> list:
    """Cases generated from the operation's schema, then its documented examples (so valid
    requests are always among them)."""
    examples = operation.get_strategies_from_examples()
    return [operation.as_strategy()] + ([st.one_of(*examples)] if examples else [])


def fuzz(schema, headers: dict, examples: int, skip: tuple[str, ...] = (),
         **call) -> dict[str, set[int]]:
    """Run every operation of `schema` with `examples` generated cases; the status codes seen."""
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, operations  # every route is in the schema
    seen: dict[str, set[int]] = {}
    for operation, strategy in ((op, way) for op in operations if op.label not in skip
                                for way in strategies(op)):
        @given(case=strategy)
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"
            start = time.monotonic()
            response = case.call(headers=headers, **call)
            took = time.monotonic() - start
            seen.setdefault(operation.label, set()).add(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body,
                                                response.text)
            assert took < DEADLINE_S, (case.method, case.path, took)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}, \
                    response.text

        check()
    return seen


def test_swarm_gateway_has_no_server_error_and_no_hang(tiny_swarm):
    schema = schemathesis.openapi.from_url(f"{tiny_swarm.base_url}/openapi.json")
    seen = fuzz(schema, {"Authorization": "Bearer sk-test"}, 8, timeout=DEADLINE_S)
    generated = {label for label, codes in seen.items() if 200 in codes}
    assert {"POST /v1/chat/completions", "POST /v1/completions"} <= generated, seen


def test_trace_routes_have_no_server_error(tiny_model_dir, tmp_path):
    from serve.gateway.api import create_app
    from tests.serve.test_api_limits import make_state
    from traces.store import TraceStore, TraceStoreConfig

    state = make_state(tiny_model_dir)
    state.traces = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"),
                                               log_dir=tmp_path / "log", embed=False))
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(state))
    no_swarm = ("POST /v1/chat/completions", "POST /v1/completions", "GET /health")
    reached = set()
    for role in ("contributor", "maintainer"):
        account = state.traces.create_account(role, role)
        key = state.traces.create_key(account.account_id)[1]
        seen = fuzz(schema, {"Authorization": f"Bearer {key}"}, 4, skip=no_swarm)
        reached |= {label for label, codes in seen.items() if codes - {401, 403}}
    assert {"GET /v1/traces", "POST /v1/grants", "GET /v1/grants",
            "POST /v1/feedback"} <= reached, reached


def test_linked_operations_in_sequence_have_no_server_error(tiny_model_dir, tmp_path):
    """Stateful: schemathesis chains the operations its link inference connects (a grant made,
    then revoked; a file uploaded, then read, listed, deleted; a batch created, read, cancelled)
    using the ids real responses returned, in random orders and repetitions."""
    from serve.gateway.api import create_app
    from tests.serve.test_api_limits import make_state
    from traces.store import TraceStore, TraceStoreConfig

    state = make_state(tiny_model_dir)
    state.traces = TraceStore(TraceStoreConfig(uri=str(tmp_path / "lancedb"),
                                               log_dir=tmp_path / "log", embed=False))
    account = state.traces.create_account("contributor", "stateful")
    headers = {"Authorization": f"Bearer {state.traces.create_key(account.account_id)[1]}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(state))
    chained: set[str] = set()
    seen: list = []

    class Sequences(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"headers": headers}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            assert response.status_code < 500, (case.method, case.path, response.text)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            seen.append((case.operation.label, response.status_code))
            if response.status_code < 400 and "{" in case.operation.path:  # an id from a reply
                chained.add(case.operation.label)

    Sequences.run(settings=settings(max_examples=25, stateful_step_count=6, deadline=None,
                                    derandomize=True, database=None,
                                    suppress_health_check=list(HealthCheck)))
    assert "DELETE /v1/grants/{grant_id}" in chained, Counter(seen)

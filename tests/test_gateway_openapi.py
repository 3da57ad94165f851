"""The gateway's OpenAPI document, and schemathesis against a live gateway: no 5xx, every answer in the schema.

schemathesis generates a few hundred calls from the document (valid and invalid bodies, odd
parameters, every endpoint, with and without a tenant's token); each answer must be a declared
status with a body that matches its schema, and none may be a server error.
"""

import json

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from test_gateway import call, env  # noqa: F401 - env is the live gateway (a module-scoped fixture)

pytestmark = pytest.mark.slow
MODELS = ["vadd", "secret", "shared_vadd", "public:shared_vadd", "bob:secret", "missing", "vadd:", "..%2F"]


def test_the_document_is_valid_openapi_and_names_every_route(env):  # noqa: F811
    from openapi_spec_validator import validate

    from dask_kaas.gateway.app import create_app

    status, _, body = call(env["gw"], "GET", "/v2/openapi.json")
    assert status == 200
    doc = json.loads(body)
    validate(doc)
    routes = {r.path for r in create_app().routes}
    documented = set(doc["paths"]) | {"/v2/openapi.json", "/metrics"}
    assert routes <= documented, sorted(routes - documented)


@pytest.fixture(scope="module")
def api_schema(env):  # noqa: F811
    _, _, body = call(env["gw"], "GET", "/v2/openapi.json")
    doc = json.loads(body)
    for path in doc["paths"].values():  # real functions (and near misses) as well as random names
        for param in path.get("parameters", []):
            if param["name"] == "model":
                param["schema"] = {"type": "string", "enum": MODELS}
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=f"http://{env['gw'].url}")
    return schema


# Plain hypothesis over schemathesis's strategies, not its pytest plugin: the plugin reaches into
# pytest's private node fields and breaks with new pytest releases.
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_error_and_every_answer_matches_the_schema(api_schema, env, mode):  # noqa: F811
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

    token = env["tokens"]["alice"]
    calls: dict[str, int] = {}
    operations = list(api_schema.get_all_operations())
    for result in operations:
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            headers = {"Authorization": f"Bearer {token}"} if "Authorization" not in (case.headers or {}) else {}
            response = case.call(headers=headers, timeout=60)
            case.validate_response(
                response, checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
            )
            calls[label] = calls.get(label, 0) + 1  # noqa: B023 - run within this iteration

        try:
            check()
        except Unsatisfiable:  # no invalid call to make of an operation without parameters or body
            assert mode == "negative" and "{" not in operation.path and operation.method != "post", label
    # every operation was called (with invalid parameters or bodies, each one that has any)
    assert len(calls) == len(operations) >= 16 if mode == "positive" else len(calls) >= 10, sorted(calls)
    assert sum(calls.values()) >= 100, calls

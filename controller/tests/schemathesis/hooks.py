"""Schemathesis hooks for the controller's contract test (controller/tests/contract.rs).

The agent's log stream is newline-delimited JSON, a media type schemathesis
has no serializer for: one `{seq, line}` object per line.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


# The one context the test uploaded before the run: a schema-valid build
# names an uploaded context, the way a stateful test names an id it was
# given. Only schema-valid cases: a malformed key stays malformed.
UPLOADED = "contexts/sha256-130f8105ec521169d9188939b6edd09f84e7ac84a2bad0e06696fd736c59fa3a.tar.gz"


def _positive(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _integers(value):
    """Integral floats (`3.0`) as integers, all the way down."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    return value


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not _positive(case):
        return
    # JSON Schema counts 3.0 as an integer; the server's types (u8, u32,
    # u64 through serde) take integers as every client writes them,
    # without a fraction. A schema-valid case is sent that way.
    if isinstance(case.body, (dict, list)):
        case.body = _integers(case.body)
    if case.operation.label == "POST /v1/builds" and isinstance(case.body, dict):
        for task in case.body.get("tasks") or []:
            if isinstance(task, dict) and "context_key" in task:
                task["context_key"] = UPLOADED


# The configuration lets POST /v1/builds answer 422 to schema-valid
# requests for what JSON Schema cannot judge (the controller's own checks).
# A 422 from the JSON reader itself is not that: it means the description
# allows a body the server's types refuse.
# cpu, memory and disk are quantities whose ranges depend on their unit
# (`500m` and `0.5` are the same CPU; 1 MiB to 4 TiB of memory): the
# description states those in words, and the reader refuses them.
QUANTITIES = (".spec.cpu:", ".spec.memory:", ".spec.disk:")


@schemathesis.check
def valid_builds_are_read(ctx, response, case):
    if (
        case.operation.label == "POST /v1/builds"
        and _positive(case)
        and response.status_code == 422
        and "Failed to deserialize" in response.text
        and not any(q in response.text for q in QUANTITIES)
    ):
        raise AssertionError(
            "a schema-valid build request was refused by the JSON reader: " + response.text
        )


# CPython 3.11's ast.parse can raise "SystemError: AST constructor
# recursion depth mismatch" when hypothesis, deep in schemathesis's
# coverage walk, parses a module to describe a filter's lambda for its
# repr. The description is cosmetic; without this the operation's coverage
# cases are lost to a Runtime Error. Only that SystemError is caught.
def _describe_lambdas_safely():
    from hypothesis.internal import lambda_sources

    describe = lambda_sources.lambda_description

    def lambda_description(f):
        try:
            return describe(f)
        except SystemError:
            return "lambda"

    lambda_sources.lambda_description = lambda_description


_describe_lambdas_safely()

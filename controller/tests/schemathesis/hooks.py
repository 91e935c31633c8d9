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


# The one context the test uploaded before the run: a build names an
# uploaded context, the way a stateful test names an id it was given.
UPLOADED = "contexts/sha256-130f8105ec521169d9188939b6edd09f84e7ac84a2bad0e06696fd736c59fa3a.tar.gz"


@schemathesis.hook
def map_body(ctx, body):
    if ctx.operation.label == "POST /v1/builds" and isinstance(body, dict):
        for task in body.get("tasks") or []:
            if isinstance(task, dict) and "context_key" in task:
                task["context_key"] = UPLOADED
    return body


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

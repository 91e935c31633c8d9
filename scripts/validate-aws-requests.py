#!/usr/bin/env python3
"""Validates the AWS requests bakery made against AWS's own service models,
and the example IAM policy against the calls.

Each line of LOG is a JSON-protocol request as scripts/moto-compat-proxy.py
logged it ({"target": "AmazonEC2ContainerServiceV20141113.RunTask", "body":
{...}}). Every request is checked with botocore's bundled model of its
service (the model the AWS CLI and SDKs are generated from): the operation
exists, every member is known, required members are present, types, enums,
lengths and ranges hold (botocore's ParamValidator), and string patterns
match (which ParamValidator leaves out). With --iam FILE, every operation
seen must be allowed by an action named in FILE (the Terraform example's
server policy), as service:Operation.

usage: validate-aws-requests.py LOG [--iam main.tf]
Prints one line per problem and exits 1 if there is any; prints what it
checked otherwise.
"""
import json
import re
import sys

import botocore.session
from botocore.validate import ParamValidator

# The models' patterns are Java regexes (\p{L}, ...): the `regex` module
# reads them; without it, patterns using \p are skipped (and said so).
try:
    import regex as pattern_re
except ImportError:
    pattern_re = None

SKIPPED = set()
session = botocore.session.get_session()
PREFIXES = {}
for service in ("ecs", "secretsmanager"):
    model = session.get_service_model(service)
    PREFIXES[model.metadata["targetPrefix"]] = (service, model)


def patterns(shape, value, path, problems):
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                patterns(member, value[name], f"{path}.{name}", problems)
    elif shape.type_name == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            patterns(shape.member, item, f"{path}[{i}]", problems)
    elif shape.type_name == "map" and isinstance(value, dict):
        for k, v in value.items():
            patterns(shape.value, v, f"{path}.{k}", problems)
    elif shape.type_name == "string" and isinstance(value, str):
        pattern = shape.metadata.get("pattern")
        if not pattern:
            return
        if pattern_re is None and "\\p" in pattern:
            SKIPPED.add(pattern)
            return
        engine = pattern_re or re
        if not engine.fullmatch(pattern, value, engine.S):
            problems.append(f"{path}: {value!r} does not match {pattern}")


def validate(log):
    problems, seen = [], {}
    for n, line in enumerate(open(log), 1):
        entry = json.loads(line)
        prefix, _, operation = entry["target"].partition(".")
        if prefix not in PREFIXES:
            problems.append(f"{log}:{n}: unknown service {prefix}")
            continue
        service, model = PREFIXES[prefix]
        if operation not in model.operation_names:
            problems.append(f"{log}:{n}: {service} has no operation {operation}")
            continue
        shape = model.operation_model(operation).input_shape
        body = entry["body"]
        report = ParamValidator().validate(body, shape)
        if report.has_errors():
            problems.append(f"{log}:{n}: {service}.{operation}: {report.generate_report()}")
        patterns(shape, body, f"{service}.{operation}", problems)
        seen[f"{service}:{operation}"] = seen.get(f"{service}:{operation}", 0) + 1
    return problems, seen


def iam_actions(path):
    return set(re.findall(r'"((?:ecs|secretsmanager|iam|s3|logs):[A-Za-z*]+)"', open(path).read()))


def main():
    args = sys.argv[1:]
    iam = None
    if "--iam" in args:
        i = args.index("--iam")
        iam = args[i + 1]
        del args[i:i + 2]
    problems, seen = validate(args[0])
    if iam:
        allowed = iam_actions(iam)
        for action in sorted(seen):
            if action not in allowed:
                problems.append(f"{iam}: the server policy does not allow {action}, which bakery calls")
    for p in problems:
        print(p)
    if not problems:
        print("valid: " + ", ".join(f"{a} x{c}" for a, c in sorted(seen.items())))
        if SKIPPED:
            print(f"not checked (no `regex` module): {len(SKIPPED)} patterns with \\p")
    sys.exit(1 if problems else 0)


main()

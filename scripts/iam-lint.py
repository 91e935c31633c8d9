#!/usr/bin/env python3
"""Runs parliament (with its community auditors) on every IAM document of an
applied Terraform state, one document at a time.

usage: terraform show -json | iam-lint.py ALLOWED

Reads `terraform show -json` on stdin; each identity policy (aws_iam_policy,
aws_iam_role_policy) and resource policy (aws_s3_bucket_policy) is analysed
on its own, so a finding names the resource it is in. Role trust policies
(assume_role_policy) are not given to parliament: it reads every document as
an identity policy and calls any trust policy malformed (no Resource); the
trust policies are checked by `terraform test` instead.

ALLOWED lists the findings kept on purpose, one per line:
`<resource address> <ISSUE> <reason>`. A finding not listed fails; a listed
finding no longer found fails too, so the list cannot go stale.
"""
import json
import sys

from parliament import analyze_policy_string

DOCUMENTS = {
    "aws_iam_policy": "policy",
    "aws_iam_role_policy": "policy",
    "aws_s3_bucket_policy": "policy",
}


def documents(state):
    for r in state.get("values", {}).get("root_module", {}).get("resources", []):
        field = DOCUMENTS.get(r["type"])
        text = r["values"].get(field) if field else None
        if text:
            yield r["address"], text


def main():
    allowed = {}
    for line in open(sys.argv[1]):
        line = line.strip()
        if line and not line.startswith("#"):
            address, issue, reason = line.split(None, 2)
            allowed[(address, issue)] = reason
    state = json.load(sys.stdin)
    seen, problems, checked = set(), [], 0
    for address, text in documents(state):
        checked += 1
        policy = analyze_policy_string(text, include_community_auditors=True)
        for f in policy.findings:
            key = (address, f.issue)
            seen.add(key)
            if key not in allowed:
                problems.append(f"{address}: {f.issue} {f.detail} {f.location}")
        print(f"checked {address}: {len(policy.findings)} finding(s)")
    for key in allowed:
        if key not in seen:
            problems.append(f"{key[0]}: {key[1]} is listed in {sys.argv[1]} but no longer found")
    if checked == 0:
        problems.append("no IAM document in the state")
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A pass-through proxy in front of moto_server for bakery's ECS tests.

moto 5 answers RunTask and DescribeTasks with the runtime containers' `cpu`
and `memory` as JSON numbers; the ECS API (and so the AWS SDK for Rust, which
parses strictly) has them as strings. This proxy turns those numbers into
strings and changes nothing else, so the controller under test talks to moto
exactly as it would to ECS. Every other request and answer passes through.

For fault-injection tests, FAIL_RUNTASK=N makes the first N RunTask calls
answer 503 ServiceUnavailableException, as ECS does during an outage, and
FAIL_S3=N the first N S3 requests 503 SlowDown, without reaching moto.
NO_CAPACITY=N answers the first N RunTask calls as ECS does when Fargate has
no capacity (200, no task, a failure "Capacity is unavailable at this time");
MISSING=N answers the first N DescribeTasks calls that name a task (without
`include`, as the watcher's are) as DescribeTasks does right after RunTask:
every task a MISSING failure.

moto sets no `stopCode`; a task stopped with the reason ECS gives a Spot
interruption ("Your Spot Task was interrupted.") gets ECS's stopCode
SpotInterruption in DescribeTasks, so a test can interrupt a task.

DescribeSecret lists only versions with a staging label, as Secrets Manager
does (moto lists every version).

PutSecretValue is answered as Secrets Manager does and moto does not: a
ClientRequestToken that names an existing version of the secret is an
idempotent retry, ignored when the value is the same (the version keeps its
stages: an earlier version is NOT made current again) and refused with
ResourceExistsException when it differs. moto instead rewrites the version
and makes it current, which hid a controller that never wrote a password
changed back to an earlier one.

FORBID_HEAD=1 answers every S3 HEAD request 403, as S3 does when the caller
may only PutObject.

REQUEST_LOG=FILE appends every JSON-protocol request (ECS, Secrets Manager)
as a line {"target": ..., "body": ...}, as the client sent it, for the tests
to validate against botocore's service models.

moto answers 500 to RunTask with a capacityProviderStrategy (bakery's default
path); CAPACITY_PROVIDERS=translate has the proxy send such a call on to
moto as launchType FARGATE, after logging it as sent.

usage: moto-compat-proxy.py LISTEN_PORT MOTO_URL
"""
import os
import threading
import http.server
import json
import sys
import urllib.error
import urllib.request

LISTEN_PORT = int(sys.argv[1])
UPSTREAM = sys.argv[2].rstrip("/")
STRING_FIELDS = ("cpu", "memory", "memoryReservation")
LIMITS = {"ecs": int(os.environ.get("FAIL_RUNTASK", "0")), "s3": int(os.environ.get("FAIL_S3", "0")),
          "capacity": int(os.environ.get("NO_CAPACITY", "0")), "missing": int(os.environ.get("MISSING", "0"))}
failed = {"ecs": 0, "s3": 0, "capacity": 0, "missing": 0}
lock = threading.Lock()
REQUEST_LOG = os.environ.get("REQUEST_LOG")
TRANSLATE = os.environ.get("CAPACITY_PROVIDERS") == "translate"


def take(kind):
    """Whether this call is one of the first LIMITS[kind] of its kind."""
    with lock:
        if failed[kind] < LIMITS[kind]:
            failed[kind] += 1
            return True
    return False


def log_request(target, body):
    if not REQUEST_LOG or not target:
        return
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        parsed = {"__unparsed__": (body or b"").decode("utf-8", "replace")}
    with lock, open(REQUEST_LOG, "a") as f:
        f.write(json.dumps({"target": target, "body": parsed}) + "\n")


def inject_failure(target, path):
    """The service to fail this request as ("ecs" or "s3"), or None: RunTask
    calls and S3 calls (no X-Amz-Target; moto's own API aside), each up to
    its limit."""
    if path.startswith("/moto-api"):
        return None
    kind = "ecs" if target.endswith(".RunTask") else "s3" if not target else None
    if kind is None:
        return None
    with lock:
        if failed[kind] < LIMITS[kind]:
            failed[kind] += 1
            return kind
    return None


SPOT_REASON = "Your Spot Task was interrupted."


def upstream_json(headers, target, doc):
    """A JSON-protocol call to moto with the caller's headers: (status, body)."""
    headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
    headers["X-Amz-Target"] = target
    data = json.dumps(doc).encode()
    req = urllib.request.Request(UPSTREAM + "/", data=data, headers=headers, method="POST")
    try:
        resp = urllib.request.urlopen(req)
        return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def idempotent_put(headers, body):
    """Secrets Manager's answer to a PutSecretValue that repeats an existing
    version's token, or None when the token is new (moto can take it)."""
    request = json.loads(body or b"{}")
    token, secret = request.get("ClientRequestToken"), request.get("SecretId")
    if not token or not secret:
        return None
    status, found = upstream_json(headers, "secretsmanager.DescribeSecret", {"SecretId": secret})
    stages = (found.get("VersionIdsToStages") or {}).get(token) if status == 200 else None
    if stages is None:
        return None
    _, version = upstream_json(headers, "secretsmanager.GetSecretValue", {"SecretId": secret, "VersionId": token})
    if version.get("SecretString") != request.get("SecretString"):
        return 400, {"__type": "ResourceExistsException",
                     "message": "You can't modify an existing version, you can only create a new version."}
    return 200, {"ARN": found["ARN"], "Name": found["Name"], "VersionId": token, "VersionStages": stages}


def staged_only(doc):
    """DescribeSecret as Secrets Manager answers it: VersionIdsToStages lists
    the versions that have a staging label; moto lists unlabelled ones too."""
    versions = doc.get("VersionIdsToStages")
    if isinstance(versions, dict):
        doc["VersionIdsToStages"] = {v: stages for v, stages in versions.items() if stages}
    return doc


def fix(doc):
    for task in doc.get("tasks", []) if isinstance(doc, dict) else []:
        if task.get("lastStatus") == "STOPPED" and (task.get("stoppedReason") or "").startswith(SPOT_REASON):
            task["stopCode"] = "SpotInterruption"
        for container in task.get("containers", []):
            for field in STRING_FIELDS:
                if isinstance(container.get(field), int):
                    container[field] = str(container[field])
    return doc


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        target = self.headers.get("X-Amz-Target", "")
        log_request(target, body)
        if target.endswith(".RunTask") and take("capacity"):
            request = json.loads(body or b"{}")
            return self.answer(200, {"tasks": [], "failures": [{
                "arn": "arn:aws:ecs:us-east-1:123456789012:container-instance/none",
                "reason": "Capacity is unavailable at this time. Please try again later or in a different availability zone",
                "detail": "injected by moto-compat-proxy (NO_CAPACITY) for " + request.get("taskDefinition", "")}]})
        if target.endswith(".PutSecretValue"):
            answer = idempotent_put(self.headers, body)
            if answer:
                return self.answer(*answer)
        # The watcher's DescribeTasks (the start-up sweep's asks for tags).
        describe = json.loads(body or b"{}") if target.endswith(".DescribeTasks") else {}
        if describe.get("tasks") and not describe.get("include") and take("missing"):
            arns = json.loads(body)["tasks"]
            return self.answer(200, {"tasks": [], "failures": [{"arn": a, "reason": "MISSING"} for a in arns]})
        if target.endswith(".RunTask") and TRANSLATE:
            request = json.loads(body or b"{}")
            if request.pop("capacityProviderStrategy", None):
                request["launchType"] = "FARGATE"
                body = json.dumps(request).encode()
        if os.environ.get("FORBID_HEAD") and self.command == "HEAD" and not target:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        kind = inject_failure(target, self.path)
        if kind:
            if kind == "ecs":
                data = json.dumps({"__type": "ServiceUnavailableException",
                                   "message": "injected by moto-compat-proxy (FAIL_RUNTASK)"}).encode()
                content_type = "application/x-amz-json-1.1"
            else:
                data = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                        b"<Message>injected by moto-compat-proxy (FAIL_S3)</Message></Error>")
                content_type = "application/xml"
            self.send_response(503)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        req = urllib.request.Request(UPSTREAM + self.path, data=body, headers=headers, method=self.command)
        try:
            resp = urllib.request.urlopen(req)
            status, rheaders, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, rheaders, data = e.code, e.headers, e.read()
        target = self.headers.get("X-Amz-Target", "")
        if target.endswith((".RunTask", ".DescribeTasks", ".StopTask")) and status == 200:
            data = json.dumps(fix(json.loads(data))).encode()
        if target.endswith(".DescribeSecret") and status == 200:
            data = json.dumps(staged_only(json.loads(data))).encode()
        self.send_response(status)
        for k, v in rheaders.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def answer(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN_PORT), Proxy).serve_forever()

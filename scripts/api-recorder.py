#!/usr/bin/env python3
"""Records every API call bakery makes, for its GitHub and GitLab tests.

  api-recorder.py PORT LOG UPSTREAM   forward to UPSTREAM (Prism serving GitHub's
                                      OpenAPI description, which rejects any
                                      request the real API would) and record
  api-recorder.py PORT LOG gitlab     answer as GitLab's REST API documents
                                      (GET /api/v4/user, POST
                                      /api/v4/projects/:id/statuses/:sha) and record

Each call is appended to LOG as one JSON line: method, path, query, request
headers that matter, JSON body, and the status answered.
"""
import http.server
import itertools
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

PORT, LOG, UPSTREAM = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ids = itertools.count(1)


def gitlab(method, path, body):
    if method == "GET" and path == "/api/v4/user":
        return 200, {"id": 1, "username": "bakery-bot", "name": "bakery", "state": "active"}
    m = re.fullmatch(r"/api/v4/projects/([^/]+)/statuses/([0-9a-f]{40})", path)
    if method == "POST" and m:
        states = {"pending", "running", "success", "failed", "canceled", "skipped"}
        if not body or body.get("state") not in states:
            return 400, {"message": "state is missing or invalid"}
        return 201, {"id": next(ids), "sha": m.group(2), "ref": body.get("ref"), "status": body["state"],
                     "name": body.get("name", "default"), "target_url": body.get("target_url"),
                     "description": body.get("description"), "allow_failure": False,
                     "author": {"id": 1, "username": "bakery-bot"}}
    return 404, {"message": "404 Not Found"}


class Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype and raw:
            body = json.loads(raw)
        elif "x-www-form-urlencoded" in ctype:
            body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
        else:
            body = raw.decode() or None
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if UPSTREAM == "gitlab":
            if isinstance(body, dict) is False and query:
                body = query
            status, answer = gitlab(self.command, url.path, body if isinstance(body, dict) else query)
            data = json.dumps(answer).encode()
        else:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            req = urllib.request.Request(UPSTREAM + self.path, data=raw or None, headers=headers, method=self.command)
            try:
                resp = urllib.request.urlopen(req)
                status, data = resp.status, resp.read()
            except urllib.error.HTTPError as e:
                status, data = e.code, e.read()
        with open(LOG, "a") as f:
            f.write(json.dumps({"method": self.command, "path": url.path, "query": query,
                                "authorization": self.headers.get("Authorization") or self.headers.get("PRIVATE-TOKEN"),
                                "body": body, "status": status}) + "\n")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Recorder).serve_forever()

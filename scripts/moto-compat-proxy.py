#!/usr/bin/env python3
"""A pass-through proxy in front of moto_server for bakery's ECS tests.

moto 5 answers RunTask and DescribeTasks with the runtime containers' `cpu`
and `memory` as JSON numbers; the ECS API (and so the AWS SDK for Rust, which
parses strictly) has them as strings. This proxy turns those numbers into
strings and changes nothing else, so the controller under test talks to moto
exactly as it would to ECS. Every other request and answer passes through.

usage: moto-compat-proxy.py LISTEN_PORT MOTO_URL
"""
import http.server
import json
import sys
import urllib.error
import urllib.request

LISTEN_PORT = int(sys.argv[1])
UPSTREAM = sys.argv[2].rstrip("/")
STRING_FIELDS = ("cpu", "memory", "memoryReservation")


def fix(doc):
    for task in doc.get("tasks", []) if isinstance(doc, dict) else []:
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
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        req = urllib.request.Request(UPSTREAM + self.path, data=body, headers=headers, method=self.command)
        try:
            resp = urllib.request.urlopen(req)
            status, rheaders, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, rheaders, data = e.code, e.headers, e.read()
        target = self.headers.get("X-Amz-Target", "")
        if target.endswith((".RunTask", ".DescribeTasks", ".StopTask")) and status == 200:
            data = json.dumps(fix(json.loads(data))).encode()
        self.send_response(status)
        for k, v in rheaders.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN_PORT), Proxy).serve_forever()

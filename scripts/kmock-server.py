#!/usr/bin/env python3
"""kmock's Kubernetes API emulator as a server, for bakery's k8s tests.

kmock serves pods over HTTP (create, get, list with label selectors, watch,
patch, delete) but stamps no resourceVersion, uid or creationTimestamp on
objects. kube-rs's watcher, like client-go's informers, needs every watched
object to carry a resourceVersion (it re-lists otherwise). This runner stamps
a monotonic resourceVersion on every write, and a uid and creationTimestamp
on creation; it changes nothing else. Watch *resumption* from a given
resourceVersion is still not emulated (kmock replays all objects on every
watch): bakery's handling of that is tested against recorded API responses.

usage: kmock-server.py PORT
"""
import asyncio
import datetime
import itertools
import sys
import uuid

import kmock
from kmock._internal import enums

PORT = int(sys.argv[1])


class Emulator(kmock.KubernetesEmulator):
    _versions = itertools.count(1)

    async def _handle(self, request):
        if request.resource is not None and isinstance(request.data, dict) and \
                request.action in (enums.action.CREATE, enums.action.UPDATE):
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self._versions))
            if request.action == enums.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp",
                                datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return await super()._handle(request)


async def main():
    async with Emulator() as emulator, kmock.Server(emulator, port=PORT):
        emulator.resources["v1/pods"].kind = "Pod"
        print(f"kmock serving on 127.0.0.1:{PORT}", flush=True)
        await asyncio.Event().wait()


asyncio.run(main())

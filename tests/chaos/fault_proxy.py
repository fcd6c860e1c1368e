"""A fault-injecting HTTP proxy in front of DynamoDB Local.

Every dynashift process under test talks to the proxy's endpoint instead of
the engine's. For a configurable share of requests, chosen per operation
(the ``X-Amz-Target`` header, e.g. ``DynamoDB_20120810.PutItem`` or
``DynamoDBStreams_20120810.GetRecords``), the proxy answers with the error
DynamoDB itself would send:

* ``throttle``: HTTP 400 ``ThrottlingException`` before forwarding (nothing
  happened on the server);
* ``error_5xx``: HTTP 500 ``InternalServerError``; half of these are sent
  AFTER forwarding the request, so the write did happen but the client
  cannot know it (the ambiguous outcome a real 5xx can have);
* ``expire``: HTTP 400 ``ExpiredIteratorException`` for GetRecords.

It is test equipment: the code under test has no idea it is there. Faults
are drawn from a seeded RNG so a scenario is reproducible in its fault
pattern (the timing of a shared machine is not). Counts of what was injected
are kept for the report.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"


@dataclass
class FaultPlan:
    throttle: float = 0.0  # share of matching requests answered with ThrottlingException
    error_5xx: float = 0.0  # share answered with InternalServerError (half after forwarding)
    expire: float = 0.0  # share of GetRecords answered with ExpiredIteratorException
    operations: tuple[str, ...] = ()  # operation names the plan applies to; empty = all
    seed: int = 7


@dataclass
class FaultProxy:
    upstream: str
    plan: FaultPlan
    injected: Counter[str] = field(default_factory=Counter)
    forwarded: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.plan.seed)
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fault-proxy")

    # ----------------------------------------------------------------- life
    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            self._session = session
            app = web.Application(client_max_size=32 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self.port)
            await site.start()
            self._started.set()
            await self._stop.wait()
            await runner.cleanup()

    # -------------------------------------------------------------- faults
    def _draw(self, operation: str) -> str | None:
        plan = self.plan
        if plan.operations and operation not in plan.operations:
            return None
        roll = self.rng.random()
        if operation == "GetRecords" and roll < plan.expire:
            return "expire"
        roll = self.rng.random()
        if roll < plan.throttle:
            return "throttle"
        if roll < plan.throttle + plan.error_5xx:
            return "5xx_after" if self.rng.random() < 0.5 else "5xx_before"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        operation = target.rsplit(".", 1)[-1]
        fault = self._draw(operation)
        if fault == "throttle":
            self.injected[f"throttle:{operation}"] += 1
            return _error(400, "ThrottlingException", "Rate of requests exceeds the allowed throughput (injected)")
        if fault == "expire":
            self.injected["expired_iterator"] += 1
            return _error(400, "ExpiredIteratorException", "Iterator expired (injected)")
        if fault == "5xx_before":
            self.injected[f"5xx_before:{operation}"] += 1
            return _error(500, "InternalServerError", "Internal server error (injected, not applied)")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        try:
            async with self._session.request(
                request.method, self.upstream + request.rel_url.path_qs, data=body, headers=headers
            ) as upstream:
                payload = await upstream.read()
                status = upstream.status
                reply_headers = {
                    k: v for k, v in upstream.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")
                }
        except aiohttp.ClientError:
            return _error(500, "InternalServerError", "engine unreachable behind the proxy")
        self.forwarded += 1
        if fault == "5xx_after" and status == 200:
            self.injected[f"5xx_after:{operation}"] += 1
            return _error(500, "InternalServerError", "Internal server error (injected, after applying)")
        return web.Response(status=status, body=payload, headers=reply_headers)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"__type": ERROR_PREFIX + code, "message": message},
        status=status,
        content_type="application/x-amz-json-1.0",
        headers={"x-amzn-ErrorType": code},
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

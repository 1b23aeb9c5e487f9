"""Prometheus metrics of the prediction server (prometheus-client), and the middleware that feeds them.

    metrics = ServerMetrics()
    metrics.observe("/v2/models/{name}/infer", 200, 0.004)
    payload, content_type = metrics.exposition()      # the body of GET /metrics
    app.add_middleware(LimitAndMeasure, max_body_bytes=10_000_000, metrics=metrics)

With several uvicorn workers (PROMETHEUS_MULTIPROC_DIR set), each process writes its values to
that folder and /metrics adds them up, so any worker answers for the whole server.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException

from fmnist.payloads import error_response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()  # one per app, so several apps in one process do not collide
        self.requests = Counter("fmnist_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.registry)  # fmt: skip
        self.errors = Counter("fmnist_request_errors", "Requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("fmnist_request_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_size = Histogram("fmnist_batch_size", "Images per model call after micro-batching",
                                    buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class LimitAndMeasure:
    """ASGI middleware: refuse bodies over the limit; time and count every request.

    A body whose Content-Length is over the limit is answered 413 before it is read; one sent
    without it (chunked) is counted as it arrives, and reading past the limit raises a 413 in the
    endpoint, uploads included (FastAPI would otherwise spool any size of multipart body to disk).
    Plain ASGI rather than FastAPI's @app.middleware("http"), whose per-request wrapping costs
    more than the model does on small requests.
    """

    def __init__(self, app, max_body_bytes: int, metrics: ServerMetrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            response = error_response(413, f"body of {int(declared):,} bytes; the limit is {self.max_body_bytes:,}")
            await response(scope, receive, send)
            self.metrics.observe("unmatched", 413, time.perf_counter() - started)
            return

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def receive_within_limit():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # FastAPI passes an HTTPException on as it is, to http_error
                    raise HTTPException(413, f"body over the limit of {self.max_body_bytes:,} bytes")
            return message

        try:
            await self.app(scope, receive_within_limit, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(route, status, time.perf_counter() - started)

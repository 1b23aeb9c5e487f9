"""Prometheus metrics of the prediction server (prometheus-client).

    metrics = ServerMetrics()
    metrics.observe("/v2/models/{name}/infer", 200, 0.004)
    payload, content_type = metrics.exposition()      # the body of GET /metrics

With several uvicorn workers (PROMETHEUS_MULTIPROC_DIR set), each process writes its values to
that folder and /metrics adds them up, so any worker answers for the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

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

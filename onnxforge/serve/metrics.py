"""Prometheus metrics of the server (prometheus-client): requests by route and status, latency, inference count
(requests and rows scored) vs execution count (onnxruntime runs) so the effective batch size shows, queue depth.

With several workers each process writes its values under PROMETHEUS_MULTIPROC_DIR (set by the launcher before
the workers start) and /metrics sums them, so any worker answers for all.
"""

from __future__ import annotations

import os

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("onnxforge_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("onnxforge_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_requests = Counter("onnxforge_inference_requests", "inference requests answered",
                                          ["model", "version"], registry=r)
        self.inference_count = Counter("onnxforge_inference_count", "rows scored (Triton's inference count)",
                                       ["model", "version"], registry=r)
        self.execution_count = Counter("onnxforge_execution_count", "onnxruntime runs: rows / runs is the "
                                       "effective batch size", ["model", "version"], registry=r)
        self.queue_depth = Gauge("onnxforge_queue_depth", "requests waiting or running, per model version",
                                 ["model", "version"], registry=r, multiprocess_mode="livesum")

    def ran(self, model: str, version: str, requests: int, rows: int) -> None:
        self.inference_requests.labels(model, version).inc(requests)
        self.inference_count.labels(model, version).inc(rows)
        self.execution_count.labels(model, version).inc()

    def depth(self, model: str, version: str, value: int) -> None:
        self.queue_depth.labels(model, version).set(value)

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)

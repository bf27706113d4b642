"""Metering: Prometheus metrics per model and tenant, and the running totals behind ``/usage``.

GPU time is what a model costs: while it has ready replicas, each second adds
``replicas x gpusPerReplica`` GPU-seconds. That time is split between tenants by their share of the
model's in-flight requests at that moment; time with replicas up and nothing in flight is charged to
the pseudo-tenant ``_idle`` (the price of keeping a model warm until KEDA's cooldown ends).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

IDLE_TENANT = "_idle"  # not a DNS label, so never a real tenant

_COLD_START_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)


@dataclass
class _ModelUsage:
    requests: int = 0
    cold_starts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replica_seconds: float = 0.0
    gpu_seconds: float = 0.0
    replicas: int = 0
    peak_replicas: int = 0
    gpus_per_replica: int = 0


@dataclass
class _TenantUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0


class Metering:
    """Owns the Prometheus registry and the usage totals since the process started."""

    def __init__(self, price_per_gpu_hour: float, currency: str) -> None:
        self.price_per_gpu_hour = price_per_gpu_hour
        self.currency = currency
        self.started_wall = time.time()
        self.started = time.monotonic()
        # a model or tenant gets its row the first time it is looked up
        self._models: defaultdict[str, _ModelUsage] = defaultdict(_ModelUsage)
        self._tenants: defaultdict[str, _TenantUsage] = defaultdict(_TenantUsage)
        self._children: dict[tuple[object, ...], Any] = {}

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sovereign_gateway_requests",
            "Requests answered, by model, tenant and HTTP status",
            ["model", "tenant", "status"],
            registry=r,
        )
        self.pending = Gauge(
            "sovereign_gateway_pending_requests",
            "Requests held at this replica until the model has a ready replica",
            ["model", "tenant"],
            registry=r,
        )
        self.in_flight = Gauge(
            "sovereign_gateway_in_flight_requests",
            "Requests forwarded by this replica and not yet finished",
            ["model", "tenant"],
            registry=r,
        )
        self.cold_starts = Counter(
            "sovereign_gateway_cold_starts",
            "Cold starts: requests held until a model's first replica was ready",
            ["model"],
            registry=r,
        )
        self.cold_start_seconds = Histogram(
            "sovereign_gateway_cold_start_seconds",
            "From the first held request to the model's first ready replica",
            ["model"],
            buckets=_COLD_START_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "sovereign_gateway_time_to_first_token_seconds",
            "Streamed requests: from arrival at the gateway to the first chunk (cold holds included)",
            ["model", "tenant"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "sovereign_gateway_prompt_tokens",
            "Prompt tokens reported by the backend",
            ["model", "tenant"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "sovereign_gateway_completion_tokens",
            "Completion tokens reported by the backend",
            ["model", "tenant"],
            registry=r,
        )
        self.ready_replicas = Gauge(
            "sovereign_gateway_ready_replicas",
            "Ready replicas of the model as this gateway replica observes them",
            ["model"],
            registry=r,
        )
        self.replica_seconds = Counter(
            "sovereign_gateway_replica_seconds",
            "Seconds of ready replicas (aggregate over gateway replicas with max, not sum)",
            ["model"],
            registry=r,
        )
        self.gpu_seconds = Counter(
            "sovereign_gateway_gpu_seconds",
            "GPU-seconds of ready replicas, split by tenants' share of in-flight requests",
            ["model", "tenant"],
            registry=r,
        )

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (the data path calls it a lot)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_count_change(self, model: str, tenant: str, pending: int, in_flight: int) -> None:
        """Keep the pending and in-flight gauges in step with the counts."""
        if pending:
            self._child(self.pending, model, tenant).inc(pending)
        if in_flight:
            self._child(self.in_flight, model, tenant).inc(in_flight)

    def request_done(
        self, model: str, tenant: str, status: int, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self._child(self.requests, model, tenant, str(status)).inc()
        model_usage, tenant_usage = self._models[model], self._tenants[tenant]
        model_usage.requests += 1
        tenant_usage.requests += 1
        if prompt_tokens:
            self._child(self.prompt_tokens, model, tenant).inc(prompt_tokens)
            model_usage.prompt_tokens += prompt_tokens
            tenant_usage.prompt_tokens += prompt_tokens
        if completion_tokens:
            self._child(self.completion_tokens, model, tenant).inc(completion_tokens)
            model_usage.completion_tokens += completion_tokens
            tenant_usage.completion_tokens += completion_tokens

    def first_token(self, model: str, tenant: str, seconds: float) -> None:
        self._child(self.ttft, model, tenant).observe(seconds)

    def cold_start(self, model: str, seconds: float) -> None:
        self.cold_starts.labels(model).inc()
        self.cold_start_seconds.labels(model).observe(seconds)
        self._models[model].cold_starts += 1

    def replicas_changed(self, model: str, replicas: int, gpus_per_replica: int) -> None:
        usage = self._models[model]
        usage.replicas = replicas
        usage.gpus_per_replica = gpus_per_replica
        usage.peak_replicas = max(usage.peak_replicas, replicas)
        self.ready_replicas.labels(model).set(replicas)

    def replica_time(
        self,
        model: str,
        replicas: int,
        gpus_per_replica: int,
        seconds: float,
        in_flight_by_tenant: dict[str, int],
    ) -> None:
        """Add ``seconds`` of ``replicas`` ready replicas of ``model``."""
        if replicas <= 0 or seconds <= 0:
            return
        usage = self._models[model]
        replica_seconds = replicas * seconds
        gpu_seconds = replica_seconds * gpus_per_replica
        usage.replica_seconds += replica_seconds
        usage.gpu_seconds += gpu_seconds
        self._child(self.replica_seconds, model).inc(replica_seconds)
        total = sum(in_flight_by_tenant.values())
        shares = (
            {tenant: count / total for tenant, count in in_flight_by_tenant.items()}
            if total
            else {IDLE_TENANT: 1.0}
        )
        for tenant, share in shares.items():
            self._tenants[tenant].gpu_seconds += gpu_seconds * share
            if gpu_seconds:
                self._child(self.gpu_seconds, model, tenant).inc(gpu_seconds * share)

    def _cost(self, gpu_seconds: float) -> float:
        return gpu_seconds * self.price_per_gpu_hour / 3600.0

    def usage(self, models: list[str]) -> dict[str, Any]:
        """The ``/usage`` document: cost so far and now, beside the cost of the same replicas 24/7."""
        window = time.monotonic() - self.started
        per_gpu_second = self.price_per_gpu_hour / 3600.0
        model_rows: list[dict[str, Any]] = []
        cost_total = always_on_total = cost_now_total = 0.0
        for name in sorted(set(models) | set(self._models)):
            usage = self._models[name]
            always_on_gpus = max(usage.peak_replicas, 1) * usage.gpus_per_replica
            always_on_cost = always_on_gpus * window * per_gpu_second
            cost = self._cost(usage.gpu_seconds)
            cost_now = usage.replicas * usage.gpus_per_replica * per_gpu_second
            cost_total += cost
            always_on_total += always_on_cost
            cost_now_total += cost_now
            model_rows.append(
                {
                    "model": name,
                    "configured": name in models,
                    "readyReplicas": usage.replicas,
                    "peakReplicas": usage.peak_replicas,
                    "gpusPerReplica": usage.gpus_per_replica,
                    "requests": usage.requests,
                    "coldStarts": usage.cold_starts,
                    "promptTokens": usage.prompt_tokens,
                    "completionTokens": usage.completion_tokens,
                    "replicaSeconds": round(usage.replica_seconds, 3),
                    "gpuSeconds": round(usage.gpu_seconds, 3),
                    "costPerSecondNow": cost_now,
                    "cost": cost,
                    "alwaysOnCost": always_on_cost,
                    "idleCostAvoided": max(always_on_cost - cost, 0.0),
                }
            )
        tenant_rows = [
            {
                "tenant": name,
                "requests": usage.requests,
                "promptTokens": usage.prompt_tokens,
                "completionTokens": usage.completion_tokens,
                "gpuSeconds": round(usage.gpu_seconds, 3),
                "cost": self._cost(usage.gpu_seconds),
            }
            for name, usage in sorted(self._tenants.items())
        ]
        return {
            "since": self.started_wall,
            "windowSeconds": round(window, 3),
            "currency": self.currency,
            "pricePerGpuHour": self.price_per_gpu_hour,
            "costPerSecondNow": cost_now_total,
            "cost": cost_total,
            "alwaysOnCost": always_on_total,
            "idleCostAvoided": max(always_on_total - cost_total, 0.0),
            "models": model_rows,
            "tenants": tenant_rows,
        }

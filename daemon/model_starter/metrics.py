"""Prometheus metrics on an explicit registry, fed by the supervisors' events.

Counters and histograms are updated from events as they happen; gauges (running
models, held requests) are read from the pool at scrape time, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from model_starter.events import Event, Started, StartFailed, State, Stopped, StopReason

if TYPE_CHECKING:
    from model_starter.pool import ModelPool

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _PoolGauges(Collector):
    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("model_starter_running_models",
                                    "Models that are ready (running and healthy)")
        running.add_metric([], sum(s.state is State.READY for s in self.pool.models.values()))
        yield running
        held = GaugeMetricFamily("model_starter_held_requests",
                                 "Requests the daemon holds while their model starts",
                                 labels=["model"])
        up = GaugeMetricFamily("model_starter_model_ready", "1 if the model is ready",
                               labels=["model"])
        asleep = GaugeMetricFamily("model_starter_model_asleep",
                                   "1 if the model sleeps (its process runs, holding "
                                   "sleep.requires)", labels=["model"])
        for name, sup in self.pool.models.items():
            held.add_metric([name], sup.held)
            up.add_metric([name], 1 if sup.state is State.READY else 0)
            asleep.add_metric([name], 1 if sup.asleep else 0)
        yield held
        yield up
        yield asleep


class Metrics:
    def __init__(self, pool: ModelPool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.start_duration = Histogram(
            "model_starter_start_duration_seconds", "Time from start to healthy",
            ["model"], buckets=START_BUCKETS, registry=r)
        self.starts = Counter("model_starter_starts", "Starts that became ready", ["model"],
                              registry=r)
        self.failed_starts = Counter("model_starter_failed_starts", "Starts that failed",
                                     ["model", "reason"], registry=r)
        self.stops = Counter("model_starter_stops",
                             f"Stops by reason ({', '.join(StopReason)})",
                             ["model", "reason"], registry=r)
        self.cold_wait = Histogram(
            "model_starter_cold_start_wait_seconds",
            "How long a request was held until its model was ready", ["model"],
            buckets=WAIT_BUCKETS, registry=r)
        r.register(_PoolGauges(pool))

    def on_event(self, event: Event) -> None:
        match event:
            case Started(model=model, seconds=seconds):
                self.starts.labels(model).inc()
                self.start_duration.labels(model).observe(seconds)
            case StartFailed(model=model, reason=reason):
                self.failed_starts.labels(model, str(reason)).inc()
            case Stopped(model=model, reason=reason):
                self.stops.labels(model, str(reason)).inc()
            case _:
                pass

    def observe_wait(self, model: str, seconds: float) -> None:
        self.cold_wait.labels(model).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

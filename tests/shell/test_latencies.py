"""The request latency histogram (metrics.Latencies): the exposition prometheus_client's own
Histogram gives for the same observations, bounds included in their bucket."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from tidegate.metrics import Latencies

BOUNDS = (0.0005, 0.001, 0.0025, 1.0)
OBSERVED = {
    "batch": [0.0001, 0.0005, 0.0005, 0.0007, 0.001, 0.003, 1.0, 2.5],
    "single": [],
    "shelly": [7.0],
}


def exposition(fill: type[Histogram] | type[Latencies]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    if fill is Histogram:
        histogram = Histogram("t_seconds", "doc", ["route"], buckets=BOUNDS, registry=registry)
        observers = {route: histogram.labels(route).observe for route in OBSERVED}
    else:
        latencies = Latencies("t_seconds", "doc", "route", BOUNDS)
        registry.register(latencies)
        observers = {route: latencies.observer(route) for route in OBSERVED}
    for route, values in OBSERVED.items():
        for value in values:
            observers[route](value)
    return generate_latest(registry)


def test_the_exposition_is_prometheus_clients_histograms() -> None:
    ours = exposition(Latencies)
    assert b't_seconds_bucket{le="0.0005",route="batch"} 3.0' in ours
    assert b't_seconds_bucket{le="1.0",route="batch"} 7.0' in ours
    assert b't_seconds_count{route="single"} 0.0' in ours
    assert ours == exposition(Histogram)


def test_an_observer_asked_again_keeps_its_series() -> None:
    latencies = Latencies("t_seconds", "doc", "route", BOUNDS)
    latencies.observer("batch")(0.002)
    latencies.observer("batch")(0.002)
    [family] = latencies.collect()
    count = [s for s in family.samples if s.name == "t_seconds_count"]
    assert [s.value for s in count] == [2.0]

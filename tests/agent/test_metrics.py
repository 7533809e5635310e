"""The server's own histograms, read back as Prometheus exposes them."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import SMART_TURN_INFERENCE, Metrics


def _samples(metrics: Metrics, name: str) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    return {
        sample.name.removeprefix(name) + sample.labels.get("le", ""): sample.value
        for sample in family.samples
    }


def test_a_smart_turn_batch_counts_once_per_request_at_its_share_of_the_time() -> None:
    metrics = Metrics()
    assert _samples(metrics, SMART_TURN_INFERENCE)["_count"] == 0.0  # exposed before use
    metrics.observe_smart_turn_batch(4, 0.08)  # 20 ms each
    metrics.observe_smart_turn_batch(1, 0.04)
    samples = _samples(metrics, SMART_TURN_INFERENCE)
    assert samples["_count"] == 5.0
    assert abs(samples["_sum"] - 0.12) < 1e-9
    assert samples["_bucket0.02"] == 4.0  # the four shares of 20 ms
    assert samples["_bucket0.03"] == 4.0
    assert samples["_bucket0.05"] == 5.0

"""A stand-in for ``ray.util.metrics``: a factory of gauges and counters that keep their values per tag set.

``sink.value(name, replica="r1")`` reads one series; ``sink.created`` lists the metric names made."""

from __future__ import annotations

from collections.abc import Sequence


class _Metric:
    def __init__(self, name: str, tag_keys: Sequence[str]) -> None:
        self.name = name
        self.tag_keys = tuple(tag_keys)
        self.series: dict[tuple[tuple[str, str], ...], float] = {}

    def _key(self, tags: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
        tags = tags or {}
        assert set(tags) <= set(self.tag_keys), f"{self.name}: undeclared tags {set(tags) - set(self.tag_keys)}"
        return tuple(sorted(tags.items()))


class FakeGauge(_Metric):
    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.series[self._key(tags)] = float(value)


class FakeCounter(_Metric):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        if value <= 0:  # as Ray's Counter
            raise ValueError(f"value must be >0, got {value}")
        key = self._key(tags)
        self.series[key] = self.series.get(key, 0.0) + value


class FakeMetricsSink:
    def __init__(self) -> None:
        self.metrics: dict[str, _Metric] = {}

    @property
    def created(self) -> list[str]:
        return sorted(self.metrics)

    def gauge(self, name: str, description: str, tag_keys: Sequence[str]) -> FakeGauge:
        assert name not in self.metrics, f"{name} created twice"
        metric = self.metrics[name] = FakeGauge(name, tag_keys)
        return metric

    def counter(self, name: str, description: str, tag_keys: Sequence[str]) -> FakeCounter:
        assert name not in self.metrics, f"{name} created twice"
        metric = self.metrics[name] = FakeCounter(name, tag_keys)
        return metric

    def value(self, name: str, **tags: str) -> float | None:
        """One series' value; None when it was never set."""
        return self.metrics[name].series.get(tuple(sorted(tags.items())))

    def by(self, name: str, tag: str, **where: str) -> dict[str, float]:
        """Series values keyed by one tag, among the series matching ``where``."""
        out = {}
        for key, value in self.metrics[name].series.items():
            tags = dict(key)
            if all(tags.get(k) == v for k, v in where.items()):
                out[tags[tag]] = value
        return out

"""Reading aiolocks' OpenTelemetry metrics back through the SDK's in-memory reader."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

WAIT = "aiolocks.lock.wait.duration"
HOLD = "aiolocks.lock.hold.duration"
ACQ = "aiolocks.lock.acquisitions"
WAITING = "aiolocks.lock.waiting"


class Metrics:
    """Reads the SDK's in-memory reader: points by instrument and attributes."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.reader = reader

    def points(self, instrument: str) -> dict[tuple[tuple[str, str], ...], Any]:
        data = self.reader.get_metrics_data()
        out: dict[tuple[tuple[str, str], ...], Any] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == instrument:
                        for p in metric.data.data_points:
                            out[tuple(sorted(p.attributes.items()))] = p
        return out

    def count(self, name: str, mode: str, outcome: str, kind: str | None = None) -> int:
        total = 0
        for attrs, p in self.points(ACQ).items():
            a = dict(attrs)
            if (a["lock.name"], a["lock.mode"], a["outcome"]) == (name, mode, outcome) and (
                kind is None or a["lock.kind"] == kind
            ):
                total += p.value
        return total

    def histogram(self, instrument: str, name: str, mode: str) -> Any:
        found = [
            p
            for attrs, p in self.points(instrument).items()
            if dict(attrs)["lock.name"] == name and dict(attrs)["lock.mode"] == mode
        ]
        assert len(found) <= 1, found
        return found[0] if found else None

    def waiting(self) -> dict[str, int]:
        return {dict(attrs)["lock.name"]: p.value for attrs, p in self.points(WAITING).items()}

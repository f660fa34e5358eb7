"""Usage per key and team as Prometheus counters, with bounded labels.

Keys are made by admins, so their names are few; still, a series per key is kept only for
the first ``max_keys`` key names a process sees, and every later key is counted as
``other`` (a scrape never grows without bound). Models are left out of the labels: the
usage table and ``GET /admin/usage`` have them per version.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

__all__ = ["KeyUsageMetrics"]


class KeyUsageMetrics:
    def __init__(self, registry: CollectorRegistry, *, max_keys: int = 100) -> None:
        self._max_keys = max_keys
        self._named: set[str] = set()
        labels = ["key", "team"]
        self.requests = Counter(
            "aiml_key_requests", "Requests by key and team.", labels, registry=registry
        )
        self.errors = Counter(
            "aiml_key_errors", "Requests answered 4xx or 5xx, by key and team.", labels,
            registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            "aiml_key_tokens", "Tokens by key, team and kind (input, output).",
            [*labels, "kind"], registry=registry,
        )  # fmt: skip
        self.cost = Counter(
            "aiml_key_cost", "Cost by key and team (the versions' prices).", labels,
            registry=registry,
        )  # fmt: skip

    def count(
        self, key: str, team: str, *, requests: int, errors: int, input_tokens: int,
        output_tokens: int, cost: float,
    ) -> None:  # fmt: skip
        if key not in self._named:
            if len(self._named) >= self._max_keys:
                key = "other"
            else:
                self._named.add(key)
        self.requests.labels(key, team).inc(requests)
        if errors:
            self.errors.labels(key, team).inc(errors)
        if input_tokens:
            self.tokens.labels(key, team, "input").inc(input_tokens)
        if output_tokens:
            self.tokens.labels(key, team, "output").inc(output_tokens)
        if cost:
            self.cost.labels(key, team).inc(cost)

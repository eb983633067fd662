"""Sample: the one typed metric sample (name, type, help, labels, value).

Every producer (flow series, RDMA counters, the bypass comparison, the agent's own health) makes
these; the series table and both encodings take them. A NamedTuple: cheap, and it unpacks as the
plain 5-tuple it replaces."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Sample"]


class Sample(NamedTuple):
    name: str
    type: str  # "counter" or "gauge"
    help: str
    labels: dict[str, str]
    value: float

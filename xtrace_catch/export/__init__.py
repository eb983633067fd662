"""Export: the series table (flows and counters as metric samples), the Prometheus text and
remote-write encodings, the pusher to VictoriaMetrics, the /metrics server and push health.

Rule: only this package imports httpx, protobuf or cramjam; their exceptions stop here.
"""

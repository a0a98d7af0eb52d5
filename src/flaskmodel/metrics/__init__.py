"""Prometheus metrics aggregated in Redis across every web and worker process, on every host.

``recorder`` accumulates counters and histogram buckets in memory per process and flushes them
to Redis in the background; ``catalogue`` names every series; ``exposition`` renders the sum
(plus gauges read from Redis at scrape time) for ``GET /metrics``.
"""

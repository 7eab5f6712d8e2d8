"""Metrics: the registry's exposition formats, the API's and worker's endpoints after real
traffic, and the Grafana dashboards against the metric names that exist."""

"""Observability: Prometheus metrics, the per-request access log, OpenTelemetry
traces. ``install`` wires them into the application (app.observability.setup)."""

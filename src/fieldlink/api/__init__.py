"""REST routes, wire schemas and Prometheus metrics."""

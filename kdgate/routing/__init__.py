"""`kdgate router ...`: the harness around `router/` (collecting records from real backends, measuring TTFT through a
real gateway, reports). The routing logic itself stays in `router/`."""

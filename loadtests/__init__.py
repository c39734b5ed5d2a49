"""TTFT load tests (a later issue builds them here)."""

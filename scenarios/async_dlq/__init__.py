"""Scenario: see README.md; run with `python -m scenarios.async_dlq`."""

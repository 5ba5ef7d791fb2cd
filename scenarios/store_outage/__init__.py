"""Scenario: see README.md; run with `python -m scenarios.store_outage`."""

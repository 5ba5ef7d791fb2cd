"""Scenario: see README.md; run with `python -m scenarios.live_reload`."""

"""Scenario: see README.md; run with `python -m scenarios.fleet_rollout`."""

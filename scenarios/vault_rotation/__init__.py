"""Scenario: see README.md; run with `python -m scenarios.vault_rotation`."""

"""Scenario: see README.md; run with `python -m scenarios.tenants_on_etcd`."""

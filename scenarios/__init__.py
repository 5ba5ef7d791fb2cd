"""Runnable end-to-end stories: `python -m scenarios.<name>` starts what it needs, narrates what
it does and sees, checks it, cleans up, and exits 0 when every check passed (1 otherwise).

    live_reload        file provider: edits on disk picked up without restart, broken edits skipped
    tenants_on_etcd    namespaces, namespace tokens and isolation on etcd
    vault_rotation     secrets from OpenBao rotated with zero downtime; Vault outage survived
    fleet_rollout      three gateways, rollout status, a bad change undone
    store_outage       etcd down: gateways keep serving, a restarted one starts from its last good
    async_dlq          async delivery survives a SIGKILL; failures dead-lettered and replayed
"""

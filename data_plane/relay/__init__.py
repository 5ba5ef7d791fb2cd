"""The relay: webhooks delivered to machines nobody can reach from outside (docs/relay.md).

Cloud side (the gateway): the `relay` step appends a webhook to its channel's durable buffer in
Redis (`store`); connectors on private machines open `/connect/NS/CHANNEL/ws|sse|poll` with the
channel's token (`routes`), each connection a `session` of the channel's consumer group, and
acknowledge by id after their local destination answered 2xx. `hub` owns the sessions and the
channel index (`channels`); `wire` is the message format both sides share.

Private side: `connector` (run by `whplane connect`) pulls, forwards and acknowledges, with the
`sse` parser for the Server-Sent Events transport.
"""

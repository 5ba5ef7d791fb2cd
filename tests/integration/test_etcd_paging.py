"""A full read in pages: every key once, at one revision, whatever the page size and the
client's receive limit."""

from __future__ import annotations

import aetcd

from cli.servers import EtcdServer
from providers.etcd_conn import prefix_range_end, range_pages


async def test_pages_shrink_under_the_receive_limit(etcd_server: EtcdServer,
                                                    etcd_prefix: str) -> None:
    host, port = etcd_server.endpoint.split(":")
    writer = aetcd.Client(host=host, port=int(port), timeout=10)
    prefix = etcd_prefix.encode()
    keys = [prefix + b"k%03d" % i for i in range(60)]
    for key in keys:
        await writer.put(key, b"x" * 3000)
    # A client that takes answers of 16 KiB at most: five documents.
    small = aetcd.Client(host=host, port=int(port), timeout=10,
                         options={"grpc.max_receive_message_length": 16 * 1024})
    await small.connect()
    try:
        for page, page_bytes in ((1000, 0), (7, 0), (2, 10_000_000), (1000, 12_000)):
            seen: list[bytes] = []
            revisions = set()
            async for resp in range_pages(small, prefix, prefix_range_end(prefix), 5,
                                          page=page, page_bytes=page_bytes):
                revisions.add(resp.header.revision)
                seen.extend(kv.key for kv in resp.kvs)
            assert seen == keys, (page, page_bytes)
            assert len(revisions) == 1  # every page read at the first one's revision
    finally:
        await small.close()
        await writer.close()

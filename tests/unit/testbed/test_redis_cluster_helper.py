"""The pure parts of testbed.redis_cluster: slot ranges and CLUSTER NODES parsing (no server)."""

import pytest

from testbed.redis_cluster import SLOTS, RedisClusterServer, parse_cluster_nodes, slot_ranges


def test_slot_ranges_cover_every_slot_once():
    for masters in (1, 3, 5):
        ranges = slot_ranges(masters)
        assert len(ranges) == masters
        assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))
    assert slot_ranges(3) == [(0, 5460), (5461, 10921), (10922, 16383)]
    with pytest.raises(ValueError):
        slot_ranges(0)


NODES = """\
aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
bbb 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10921 [5500->-ccc]
ccc 127.0.0.1:7002@17002 master,fail - 0 1 3 disconnected
ddd 127.0.0.1:7003@17003 slave aaa 0 1 1 connected
eee 127.0.0.1:7004@17004 master - 0 1 4 connected 10922 10923-16383
"""


def test_parse_cluster_nodes():
    nodes = {n.node_id: n for n in parse_cluster_nodes(NODES)}
    assert nodes["aaa"].port == 7000 and nodes["aaa"].is_master and nodes["aaa"].slots == ((0, 5460),)
    assert nodes["bbb"].slots == ((5461, 10921),)  # a migrating slot is not an owned range
    assert not nodes["ccc"].is_master and not nodes["ccc"].connected
    assert nodes["ddd"].master_id == "aaa" and not nodes["ddd"].is_master
    assert nodes["eee"].slots == ((10922, 10922), (10923, 16383))


def test_url_names_every_node():
    cluster = RedisClusterServer()
    cluster.ports = [7000, 7001]
    assert cluster.url == "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"

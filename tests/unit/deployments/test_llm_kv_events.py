"""KV-event publishing of the LLM replica: off by default, per-replica ports and topic when on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from deployments.app import AppArgs
from deployments.kv_subscriber import parse_kv_topic
from deployments.llm_server import KVEventsArgs, _kv_events_publishing


def context(rank: int, replica: str = "SERVE_REPLICA::tcrag#llm#abc") -> SimpleNamespace:
    return SimpleNamespace(rank=SimpleNamespace(local_rank=rank), replica_id=SimpleNamespace(unique_id=replica))


def test_off_by_default_in_code_and_in_serve_config() -> None:
    assert KVEventsArgs().enabled is False
    assert _kv_events_publishing(KVEventsArgs(), context(0)) is None
    assert AppArgs().llm.kv_events.enabled is False


def test_each_local_rank_binds_its_own_pair_of_ports_and_names_its_engine() -> None:
    args = KVEventsArgs(enabled=True, base_port=26000)
    first = _kv_events_publishing(args, context(0))
    second = _kv_events_publishing(args, context(1))
    assert (first.endpoint, first.replay_endpoint) == ("tcp://*:26000", "tcp://*:26001")
    assert (second.endpoint, second.replay_endpoint) == ("tcp://*:26002", "tcp://*:26003")
    replica, nonce = parse_kv_topic(first.topic)
    assert replica == "SERVE_REPLICA::tcrag#llm#abc" and nonce
    # A restarted engine of the same replica gets another nonce: the index clears the replica.
    assert _kv_events_publishing(args, context(0)).topic != first.topic


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError):
        KVEventsArgs(enabled=True, port=1)

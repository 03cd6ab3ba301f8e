"""make_remote_embed without Ray: lists and single texts reach the right method, and a call that times out
(or whose caller is cancelled, as a batch timeout does) is cancelled at the embedder too."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.embedder import make_remote_embed


class FakeResponse:
    """Test double of a DeploymentResponse: awaitable, answers `value` unless `hang`; records cancel()."""

    def __init__(self, value, hang: bool) -> None:
        self.value = value
        self.hang = hang
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        if self.hang:
            yield from asyncio.Event().wait().__await__()
        return self.value


class FakeHandle:
    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.calls: list[tuple[str, object]] = []
        self.responses: list[FakeResponse] = []

    def options(self, method_name: str):
        handle = self

        class Method:
            def remote(self, arg):
                handle.calls.append((method_name, arg))
                value = [[1.0, 0.0]] * len(arg) if method_name == "embed" else [0.0, 1.0]
                handle.responses.append(FakeResponse(value, handle.hang))
                return handle.responses[-1]

        return Method()


async def test_lists_and_single_texts_go_to_their_methods():
    handle = FakeHandle()
    embed = make_remote_embed(handle, timeout_s=1)
    assert (await embed(["a", "b"])).shape == (2, 2)
    np.testing.assert_array_equal(await embed(["q"]), np.array([[0.0, 1.0]], dtype=np.float32))
    assert handle.calls == [("embed", ["a", "b"]), ("embed_one", "q")]


async def test_a_call_that_times_out_is_cancelled_at_the_embedder():
    handle = FakeHandle(hang=True)
    with pytest.raises(TimeoutError):
        await make_remote_embed(handle, timeout_s=0.01)(["a", "b"])
    assert handle.responses[0].cancelled


async def test_a_cancelled_caller_cancels_the_call():
    handle = FakeHandle(hang=True)
    with pytest.raises(TimeoutError):  # the batch timeout of retrieval.batching, shorter than the call's own
        await asyncio.wait_for(make_remote_embed(handle, timeout_s=10)(["q"]), 0.01)
    assert handle.responses[0].cancelled


class LosingHandle(FakeHandle):
    """The first ``lost`` calls die as a call does whose embedder replica was on a lost node."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost

    def options(self, method_name: str):
        method = super().options(method_name)
        handle = self

        class Losing:
            def remote(self, arg):
                if len(handle.calls) < handle.lost:
                    handle.calls.append((method_name, arg))

                    async def died():
                        from ray.exceptions import ActorDiedError

                        raise ActorDiedError()
                    return died()
                return method.remote(arg)

        return Losing()


async def test_a_call_whose_embedder_replica_died_is_sent_once_more():
    handle = LosingHandle(lost=1)
    np.testing.assert_array_equal(await make_remote_embed(handle, timeout_s=1)(["q"]),
                                  np.array([[0.0, 1.0]], dtype=np.float32))
    assert handle.calls == [("embed_one", "q"), ("embed_one", "q")]


async def test_an_embedder_lost_twice_raises_the_loss():
    from ray.exceptions import ActorDiedError

    handle = LosingHandle(lost=5)
    with pytest.raises(ActorDiedError):
        await make_remote_embed(handle, timeout_s=1)(["a", "b"])
    assert len(handle.calls) == 2

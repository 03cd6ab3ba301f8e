"""EmbedderServer under a real `serve.run`: concurrent single-text calls are batched."""

import asyncio

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder_handle():
    import ray
    from ray import serve

    from deployments.embedder import EmbedderServer
    from retrieval.config import EmbedderConfig

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    app = EmbedderServer.options(ray_actor_options={"num_cpus": 0.1}).bind(
        EmbedderConfig(max_batch_size=16, batch_wait_timeout_s=0.05, num_threads=1)
    )
    handle = serve.run(app, name="embedder-test", route_prefix=None)
    yield handle
    serve.shutdown()
    ray.shutdown()


async def test_concurrent_calls_are_batched(embedder_handle):
    from deployments.embedder import make_remote_embed

    texts = [f"question number {i} about billing" for i in range(24)]
    before = await embedder_handle.batch_stats.remote()
    vectors = await asyncio.gather(*(embedder_handle.embed_one.remote(t) for t in texts))
    after = await embedder_handle.batch_stats.remote()
    calls = after["calls"] - before["calls"]
    batches = after["batches"] - before["batches"]
    assert calls == len(texts)
    assert batches < calls, f"{calls} calls served in {batches} batches"
    vectors = np.asarray(vectors, dtype=np.float32)
    assert vectors.shape == (24, 384)
    # Batched results equal the bulk path's results for the same texts (within bf16 rounding: under the
    # default precision a text padded to another batch's length may round one value differently).
    bulk = np.asarray(await embedder_handle.embed.remote(texts), dtype=np.float32)
    assert float((vectors * bulk).sum(axis=1).min()) >= 0.9999

    embed = make_remote_embed(embedder_handle, timeout_s=30)
    one = await embed(["single query"])
    many = await embed(["a", "b", "c"])
    assert one.shape == (1, 384) and many.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, rtol=1e-5)

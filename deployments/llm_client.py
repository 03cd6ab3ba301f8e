"""Calls into the LLM pool through a Serve handle, with a timeout and one retry on a lost replica.

A replica that dies mid-request (engine crash, node loss) surfaces as an actor error; the request has
not produced an answer yet, so it is safe to send it again, and the router picks a live replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from llm import EngineDeadError, GenerateRequest, GenerateResult, InvalidRequestError, LLMUnavailableError, StreamDelta
from routing.prefix_affinity import PrefixKeyConfig

__all__ = ["LLMPoolClient", "REPLICA_LOST", "await_response"]

logger = logging.getLogger(__name__)

# A replica that died under a request (process or node lost): the request may be sent again.
REPLICA_LOST = (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaUnavailableError, EngineDeadError)


class LLMPoolClient:
    """``generate`` and ``generate_stream`` against the pool; raises ``LLMUnavailableError`` on timeout."""

    def __init__(self, handle: DeploymentHandle, timeout_s: float, retries: int = 1,
                 prefix_key: PrefixKeyConfig | None = None) -> None:
        self._handle = handle
        self._prefix_key = prefix_key or PrefixKeyConfig()
        self._timeout_s = timeout_s
        self._retries = retries

    def _handle_for(self, request: GenerateRequest) -> DeploymentHandle:
        """The handle with the prompt's prefix key as Serve's ``session_id``.

        Our router reads the token IDs itself; the session id lets Ray's own session-sticky routers
        (``ConsistentHashRouter``) place requests by prefix too, so they can be configured and compared
        on equal terms. A prompt without a key (shorter than one block) keeps Serve's per-request id.
        """
        try:
            key = self._prefix_key.key(request.prompt_token_ids, context_end=request.prefix_len,
                                       cache_salt=request.cache_salt)
        except ValueError:
            key = None  # malformed IDs: the replica rejects the request with the field named
        return self._handle if key is None else self._handle.options(session_id=key)

    async def generate(self, request: GenerateRequest) -> GenerateResult:
        last_err: BaseException | None = None
        handle = self._handle_for(request)
        for attempt in range(self._retries + 1):
            response = handle.generate.remote(request)
            try:
                try:
                    return await asyncio.wait_for(await_response(response), timeout=self._timeout_s)
                except RayTaskError as err:
                    # The replica raised: hand on its own error (e.g. InvalidRequestError with its field).
                    raise _unwrap(err) from err
            except TimeoutError as err:
                response.cancel()
                raise LLMUnavailableError(f"the LLM pool did not answer within {self._timeout_s:.0f} s") from err
            except REPLICA_LOST as err:
                last_err = err
                logger.warning("LLM replica lost (attempt %d): %s", attempt + 1, err)
            except (BackPressureError, DeploymentUnavailableError) as err:
                raise LLMUnavailableError(f"the LLM pool is unavailable: {err}") from err
        raise LLMUnavailableError(f"the LLM pool lost the request's replica: {last_err}") from last_err

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]:
        """Stream deltas; each delta must arrive within the timeout (a stalled stream is cancelled).

        A caller that stops reading before the final delta (a stop string matched) closes this generator:
        the replica's call is cancelled then, which aborts the request in its engine."""
        stream = self._handle_for(request).options(stream=True).generate_stream.remote(request)
        iterator = stream.__aiter__()
        done = False
        try:
            while True:
                try:
                    delta = await asyncio.wait_for(iterator.__anext__(), timeout=self._timeout_s)
                except StopAsyncIteration:
                    done = True
                    return
                except TimeoutError as err:
                    raise LLMUnavailableError(f"the LLM pool stalled for {self._timeout_s:.0f} s") from err
                except RayTaskError as err:
                    done = True
                    raise _unwrap(err) from err
                except (*REPLICA_LOST, BackPressureError, DeploymentUnavailableError) as err:
                    done = True
                    raise LLMUnavailableError(f"the LLM pool failed mid-stream: {err}") from err
                if delta.result is not None:
                    done = True
                yield delta
        finally:
            if not done:
                stream.cancel()


def _unwrap(err: RayTaskError) -> BaseException:
    cause = getattr(err, "cause", None)
    if isinstance(cause, InvalidRequestError | EngineDeadError):
        return cause
    return err


async def await_response(response: Any) -> Any:
    """A ``DeploymentResponse`` is awaitable but not a coroutine, and ``asyncio.wait_for`` needs one."""
    return await response

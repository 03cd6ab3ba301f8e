"""``/v1/completions`` and ``/v1/chat/completions`` over the LLM pool, as vLLM's OpenAI server answers
them, in one plain class (the gateway's routes only hand bodies in and answers out).

- Prompts: token-ID prompts go to the pool untouched; text prompts are tokenized as vLLM tokenizes them
  (special-token text parsed, the tokenizer's specials added unless ``add_special_tokens`` is false); chat
  messages are rendered with the model's chat template and tokenized by the same tokenizer the token
  cache uses. With ``collection`` (our RAG hook) the chat prompt is assembled by the pipeline instead
  (``ChatContext``): retrieved chunks as cached token IDs in the system turn, in the agents' reuse order.
- Output: the engine runs without a tokenizer, so text is decoded here, incrementally, and stop strings
  are found here. When one matches, the pool stream is closed, which aborts the request on its replica
  (vLLM would stop there too). While streaming, the last ``len(longest stop) - 1`` characters are held
  back so that a stop string split across tokens is never sent; a trailing incomplete UTF-8 character
  is held back too.
- Answers: vLLM's JSON (``usage.prompt_tokens_details.cached_tokens`` always), or server-sent events in
  OpenAI's chunk format ending with ``data: [DONE]``; ``stream_options.include_usage`` adds a last chunk
  with empty ``choices`` and the usage. An error after the stream started is sent as a ``data:
  {"error": ...}`` event before ``[DONE]``, as vLLM does; errors before it (a prompt too long, a full
  pool) are raised so that the route answers with a status code: the stream opens only once the first
  tokens arrived.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm.exceptions import InvalidRequestError, LLMError
from llm.openai_api import ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingFields
from llm.types import GenerateRequest, StreamDelta, TokenLogprob

__all__ = ["ChatContext", "CompletionsService", "ContextPrompt", "OpenAITokenizer", "StreamingGenerator"]

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
MIN_LOGPROB = -9999.0  # what OpenAI (and vLLM) send instead of -inf
RAG_RESERVED_OUTPUT = 256  # output tokens kept free when packing chunks for a chat without a max


class OpenAITokenizer(Protocol):
    """What the service needs from the served model's tokenizer (``tokenization.HuggingFaceTokenizer``)."""

    @property
    def vocab_size(self) -> int: ...

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    continue_final_message: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_text(self, token_id: int) -> str: ...


class StreamingGenerator(Protocol):
    """The LLM pool as this service calls it (the pool client, its fallback wrapper, a test double)."""

    def generate_stream(self, request: GenerateRequest) -> AsyncIterator[StreamDelta]: ...


@dataclass(frozen=True, slots=True)
class ContextPrompt:
    """A chat prompt assembled with retrieved context: token IDs, where the shared prefix ends, and
    what the retrieval and the token cache did (reported under ``rag`` in the answer)."""

    token_ids: list[int]
    prefix_len: int
    sources: list[str]
    cache_hits: int
    cache_misses: int


class ChatContext(Protocol):
    """The RAG hook: ``rag.chat.RAGChatContext`` in the app."""

    async def prompt(self, *, collection: str, top_k: int | None, system: str | None,
                     turns: Sequence[tuple[str, str]], user: str, max_tokens: int,
                     cache_salt: str | None) -> ContextPrompt: ...


@dataclass(slots=True)
class _Job:
    """One request, prepared: what goes to the pool and what the answer needs to say."""

    kind: str  # "completion" | "chat"
    request: SamplingFields
    prompt_ids: list[int]
    generate: GenerateRequest | None  # None: echo with max_tokens 0 (nothing to generate)
    echo_text: str = ""
    logprobs: int | None = None
    rag: dict[str, Any] | None = None
    request_id: str = ""
    created: int = 0


@dataclass(slots=True)
class _Piece:
    """New output since the last piece: text (maybe empty while held back), token IDs, logprobs."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass(slots=True)
class _Totals:
    completion_tokens: int = 0
    num_cached_tokens: int = 0
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class IncrementalText:
    """Output text decoded as tokens arrive, cut at the first stop string (see the module docstring).

    Decoding is incremental the way vLLM and transformers' streamers do it: only the tokens since the last
    step plus the step before as context are decoded (``prefix``..``read`` is that context), and text is
    taken only once it no longer ends in an incomplete UTF-8 character, so the work per token is constant.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str], include_stop: bool) -> None:
        self._decode = decode
        self._stops = list(stops)
        self._include_stop = include_stop
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._text = ""
        self._sent = 0

    def _decode_new(self, final: bool) -> None:
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self._text += new_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(self._ids)

    def add(self, token_ids: Sequence[int]) -> tuple[str, str | None]:
        """The text that can be sent now, and the stop string that ended the output (if one did)."""
        self._ids.extend(token_ids)
        self._decode_new(final=False)
        text = self._text
        if self._stops:
            start = max(0, self._sent - self._hold)
            hits = [(i, s) for s in self._stops if (i := text.find(s, start)) >= 0]
            if hits:
                index, stop = min(hits)
                end = index + (len(stop) if self._include_stop else 0)
                out, self._sent = text[self._sent:end], max(self._sent, end)
                return out, stop
        safe = len(text) - self._hold
        if safe <= self._sent:
            return "", None
        out, self._sent = text[self._sent:safe], safe
        return out, None

    def flush(self) -> str:
        """The rest of the text, once the output is complete."""
        self._decode_new(final=True)
        out, self._sent = self._text[self._sent:], max(self._sent, len(self._text))
        return out


class CompletionsService:
    """Serves the OpenAI routes on the pool; ``complete``/``chat`` return a JSON dict, or an async
    iterator of server-sent events when the request streams."""

    def __init__(
        self,
        tokenizer: OpenAITokenizer,
        llm: StreamingGenerator,
        model_name: str,
        max_model_len: int,
        chat_context: ChatContext | None = None,
        clock: Callable[[], float] = time.time,
        open_prompt_prefix_tokens: int = 256,
    ) -> None:
        self._tokenizer = tokenizer
        # A raw OpenAI prompt does not say where its shared part ends; the router keys it on this many
        # leading tokens (see ``_generate_request``).
        self._open_prefix_tokens = open_prompt_prefix_tokens
        self._llm = llm
        self._model_name = model_name
        self._max_model_len = max_model_len
        self._context = chat_context
        self._clock = clock

    @property
    def model_name(self) -> str:
        return self._model_name

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``, as vLLM lists its model (with ``max_model_len``)."""
        return {"object": "list", "data": [{
            "id": self._model_name, "object": "model", "created": int(self._clock()), "owned_by": "token-cached-rag",
            "root": self._model_name, "parent": None, "max_model_len": self._max_model_len, "permission": [],
        }]}

    # ------------------------------------------------------------------ requests -> jobs

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self._model_name:
            raise InvalidRequestError("model", f"unknown model {model!r}; this server serves {self._model_name!r}")

    def _check_ids(self, ids: Sequence[int], field: str) -> None:
        vocab = self._tokenizer.vocab_size
        for i, tid in enumerate(ids):
            if not 0 <= tid < vocab:
                raise InvalidRequestError(f"{field}[{i}]", f"token id {tid} is outside the vocabulary (0..{vocab - 1})")

    def _budget(self, prompt_len: int, max_tokens: int | None, field: str, prompt_field: str) -> int:
        """The output budget: the request's, else what the context leaves (vLLM's default for chat)."""
        room = self._max_model_len - prompt_len
        if room < 1:
            raise InvalidRequestError(prompt_field, f"the prompt ({prompt_len} tokens) does not leave room for output "
                                      f"in the model's context of {self._max_model_len} tokens")
        if max_tokens is None:
            return room
        if max_tokens > room:
            raise InvalidRequestError(field, f"prompt ({prompt_len} tokens) plus {field} ({max_tokens}) exceeds the "
                                      f"model's context of {self._max_model_len} tokens")
        return max_tokens

    def _generate_request(self, request: SamplingFields, prompt_ids: list[int], max_tokens: int,
                          logprobs: int | None, prefix_len: int | None = None) -> GenerateRequest:
        self._check_ids(request.stop_token_ids or [], "stop_token_ids")
        if request.min_tokens > max_tokens:
            raise InvalidRequestError("min_tokens", f"must not exceed the output budget ({max_tokens} tokens)")
        if prefix_len is None:
            # Unknown context end: without one the router's key would cover the first ~1,024 tokens, unique
            # tails included, and prompts sharing a long prefix (a system prompt, a document, vLLM's
            # prefix_repetition set) would land on different replicas. Their leading tokens are the likeliest
            # shared part; a per-request tail past them no longer moves the request.
            prefix_len = min(len(prompt_ids), self._open_prefix_tokens)
        return GenerateRequest(prompt_token_ids=prompt_ids, max_tokens=max_tokens, prefix_len=prefix_len,
                               logprobs=logprobs, request_id=uuid.uuid4().hex, **request.sampling())

    async def _completion_job(self, request: CompletionRequest) -> _Job:
        self._check_model(request.model)
        if isinstance(request.prompt, str):
            prompt_ids = await asyncio.to_thread(self._tokenizer.encode_prompt, request.prompt,
                                                 request.add_special_tokens)
            prompt_text = request.prompt
        else:
            self._check_ids(request.prompt, "prompt")
            prompt_ids = list(request.prompt)
            prompt_text = self._tokenizer.decode(prompt_ids) if request.echo else ""
        generate = None
        if request.output_budget > 0:
            max_tokens = self._budget(len(prompt_ids), request.output_budget, "max_tokens", "prompt")
            generate = self._generate_request(request, prompt_ids, max_tokens, request.logprobs)
        return _Job("completion", request, prompt_ids, generate, echo_text=prompt_text if request.echo else "",
                    logprobs=request.logprobs)

    async def _chat_job(self, request: ChatCompletionRequest) -> _Job:
        self._check_model(request.model)
        budget_field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        rag = None
        prefix_len = None
        if request.collection is not None:
            if self._context is None:
                raise InvalidRequestError("collection", "retrieval is not available on this server")
            system, turns, user = _rag_conversation(request)
            context = await self._context.prompt(
                collection=request.collection, top_k=request.retrieval_top_k, system=system, turns=turns, user=user,
                max_tokens=request.output_budget or RAG_RESERVED_OUTPUT, cache_salt=request.cache_salt)
            prompt_ids, prefix_len = context.token_ids, context.prefix_len
            rag = {"collection": request.collection, "sources": context.sources,
                   "cache": {"hits": context.cache_hits, "misses": context.cache_misses}}
        else:
            messages = [m.template_dict() for m in request.messages]
            try:
                prompt_ids = await asyncio.to_thread(self._tokenizer.render_chat, messages,
                                                     request.add_generation_prompt, request.continue_final_message)
            except Exception as err:  # the template refused the conversation (jinja's TemplateError, ValueError)
                raise InvalidRequestError("messages", f"the chat template cannot render these messages: {err}") from err
        max_tokens = self._budget(len(prompt_ids), request.output_budget, budget_field, "messages")
        generate = self._generate_request(request, prompt_ids, max_tokens, request.logprobs_k, prefix_len)
        return _Job("chat", request, prompt_ids, generate, logprobs=request.logprobs_k, rag=rag)

    # ------------------------------------------------------------------ the two routes

    async def complete(self, request: CompletionRequest) -> dict[str, Any] | AsyncIterator[str]:
        return await self._serve(await self._completion_job(request))

    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any] | AsyncIterator[str]:
        return await self._serve(await self._chat_job(request))

    async def _serve(self, job: _Job) -> dict[str, Any] | AsyncIterator[str]:
        job.request_id = f"{'cmpl' if job.kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex}"
        job.created = int(self._clock())
        pieces = await self._open(job)
        if job.request.stream:
            return self._events(job, pieces)
        totals = _Totals()
        async for piece in pieces:
            _accumulate(totals, piece)
        return self._answer(job, totals)

    # ------------------------------------------------------------------ generation

    async def _open(self, job: _Job) -> AsyncIterator[_Piece | _Totals]:
        """Start generating and wait for the first tokens (errors so far raise: the route answers 4xx/5xx),
        then hand on the pieces. The final item is the ``_Totals`` of the whole output."""
        if job.generate is None:
            return _echo_only(job)
        stream = self._llm.generate_stream(job.generate)
        try:
            first = await anext(aiter(stream))
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _close(stream)
            raise
        return self._pieces(job, stream, first)

    async def _pieces(self, job: _Job, stream: AsyncIterator[StreamDelta],
                      first: StreamDelta | None) -> AsyncIterator[_Piece | _Totals]:
        request = job.request
        text = IncrementalText(self._tokenizer.decode, request.stops, request.include_stop_str_in_output)
        stop_ids = set(request.stop_token_ids or [])
        totals = _Totals()

        async def deltas() -> AsyncIterator[StreamDelta]:
            if first is not None:
                yield first
            async for delta in stream:
                yield delta

        source = deltas()
        try:
            async for delta in source:
                if delta.num_cached_tokens is not None:
                    totals.num_cached_tokens = delta.num_cached_tokens
                totals.completion_tokens += len(delta.token_ids)
                new, stopped_by = text.add(delta.token_ids)
                piece = _Piece(new, list(delta.token_ids), delta.logprobs)
                if stopped_by is not None:
                    piece.finish_reason, piece.stop_reason = "stop", stopped_by
                elif delta.result is not None:
                    piece.text += text.flush()
                    totals.num_cached_tokens = delta.result.num_cached_tokens
                    piece.finish_reason = "length" if delta.result.finish_reason == "length" else "stop"
                    last = delta.result.token_ids[-1] if delta.result.token_ids else None
                    piece.stop_reason = last if piece.finish_reason == "stop" and last in stop_ids else None
                yield piece
                if piece.finish_reason is not None:
                    break
        finally:
            await _close(source)
            await _close(stream)  # a stop string ended it early: abort the rest on the replica
        yield totals

    # ------------------------------------------------------------------ answers

    def _usage(self, job: _Job, totals: _Totals) -> dict[str, Any]:
        prompt_tokens = len(job.prompt_ids)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": totals.completion_tokens,
                "total_tokens": prompt_tokens + totals.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": totals.num_cached_tokens}}

    def _answer(self, job: _Job, totals: _Totals) -> dict[str, Any]:
        request = job.request
        text = "".join(totals.text)
        ids = totals.token_ids
        if job.kind == "completion":
            logprobs = None
            if job.logprobs is not None:
                logprobs = self._completion_logprobs(totals.logprobs, job.logprobs, 0)
            choice: dict[str, Any] = {"index": 0, "text": job.echo_text + text, "logprobs": logprobs,
                                      "finish_reason": totals.finish_reason, "stop_reason": totals.stop_reason}
            if request.return_token_ids:
                choice["prompt_token_ids"] = job.prompt_ids
                choice["token_ids"] = ids
            body: dict[str, Any] = {"id": job.request_id, "object": "text_completion", "created": job.created,
                                    "model": self._model_name, "choices": [choice]}
        else:
            chat_choice: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": self._chat_logprobs(totals.logprobs, job.logprobs) if job.logprobs is not None else None,
                "finish_reason": totals.finish_reason, "stop_reason": totals.stop_reason,
            }
            if request.return_token_ids:
                chat_choice["token_ids"] = ids
            body = {"id": job.request_id, "object": "chat.completion", "created": job.created,
                    "model": self._model_name, "choices": [chat_choice]}
            if request.return_token_ids:
                body["prompt_token_ids"] = job.prompt_ids
        body["usage"] = self._usage(job, totals)
        if job.rag is not None:
            body["rag"] = job.rag
        return body

    async def _events(self, job: _Job, pieces: AsyncIterator[_Piece | _Totals]) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format (vLLM's fields), then ``data: [DONE]``."""
        request = job.request
        chat = job.kind == "chat"
        head = {"id": job.request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": job.created, "model": self._model_name}
        completion_tokens = 0
        first = True
        text_offset = 0
        try:
            async for piece in pieces:
                if isinstance(piece, _Totals):
                    if request.include_usage:
                        yield _event({**head, "choices": [], "usage": self._usage(job, piece)})
                    if job.rag is not None:  # our extension, on a chunk of its own (clients skip unknown chunks)
                        yield _event({**head, "choices": [], "rag": job.rag})
                    break
                completion_tokens += len(piece.token_ids)
                if chat:
                    if first:
                        opening: dict[str, Any] = {**head, "choices": [{
                            "index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}]}
                        if request.return_token_ids:
                            opening["prompt_token_ids"] = job.prompt_ids
                        yield _event(opening)
                    choice: dict[str, Any] = {
                        "index": 0, "delta": {"content": piece.text},
                        "logprobs": (self._chat_logprobs(piece.logprobs or [], job.logprobs)
                                     if job.logprobs is not None else None),
                        "finish_reason": piece.finish_reason, "stop_reason": piece.stop_reason,
                    }
                    if request.return_token_ids:
                        choice["token_ids"] = piece.token_ids
                else:
                    text, ids, logprob_list = piece.text, piece.token_ids, piece.logprobs or []
                    if first and request.echo:
                        text, ids = job.echo_text + text, [*job.prompt_ids, *ids]
                    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": piece.finish_reason,
                              "stop_reason": piece.stop_reason}
                    if job.logprobs is not None:
                        choice["logprobs"] = self._completion_logprobs(logprob_list, job.logprobs, text_offset)
                        text_offset = _next_offset(choice["logprobs"], text_offset)
                    if request.return_token_ids:
                        if first:
                            choice["prompt_token_ids"] = job.prompt_ids
                        choice["token_ids"] = ids
                first = False
                chunk = {**head, "choices": [choice]}
                if request.continuous_usage:
                    prompt_tokens = len(job.prompt_ids)
                    chunk["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                      "total_tokens": prompt_tokens + completion_tokens}
                yield _event(chunk)
        except LLMError as err:  # headers are sent: report it as an event, as vLLM does
            logger.warning("stream %s failed: %s", job.request_id, err)
            yield _event({"error": {"message": str(err), "type": type(err).__name__, "param": getattr(err, "field", None),
                                    "code": 400 if isinstance(err, InvalidRequestError) else 503}})
        finally:
            await _close(pieces)
        yield DONE

    # ------------------------------------------------------------------ logprobs, in vLLM's two formats

    def _chat_logprobs(self, logprobs: Sequence[TokenLogprob], top: int | None) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            token = self._tokenizer.token_text(token_id)
            return {"token": token, "logprob": max(logprob, MIN_LOGPROB),
                    "bytes": list(token.encode("utf-8", errors="replace"))}

        return {"content": [{**entry(lp.token_id, lp.logprob),
                             "top_logprobs": [entry(tid, value) for tid, value in lp.entries[:top or 0]]}
                            for lp in logprobs]}

    def _completion_logprobs(self, logprobs: Sequence[TokenLogprob], top: int, offset: int) -> dict[str, Any]:
        tokens = [self._tokenizer.token_text(lp.token_id) for lp in logprobs]
        offsets: list[int] = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {
            "text_offset": offsets,
            "token_logprobs": [max(lp.logprob, MIN_LOGPROB) for lp in logprobs],
            "tokens": tokens,
            # vLLM sends the sampled token's entry plus `logprobs` alternatives (its first k+1 entries).
            "top_logprobs": [{self._tokenizer.token_text(tid): max(value, MIN_LOGPROB) for tid, value in lp.entries[:top + 1]}
                             for lp in logprobs],
        }


# ---------------------------------------------------------------------- helpers


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def _next_offset(logprobs: dict[str, Any], offset: int) -> int:
    if logprobs["tokens"]:
        return logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
    return offset


def _accumulate(totals: _Totals, item: _Piece | _Totals) -> None:
    if isinstance(item, _Totals):
        totals.completion_tokens, totals.num_cached_tokens = item.completion_tokens, item.num_cached_tokens
        return
    totals.text.append(item.text)
    totals.token_ids.extend(item.token_ids)
    totals.logprobs.extend(item.logprobs or [])
    if item.finish_reason is not None:
        totals.finish_reason, totals.stop_reason = item.finish_reason, item.stop_reason


async def _echo_only(job: _Job) -> AsyncIterator[_Piece | _Totals]:
    """echo with max_tokens 0: the prompt alone, nothing generated (as vLLM answers it)."""
    yield _Piece("", [], [] if job.logprobs is not None else None, finish_reason="length")
    yield _Totals()


async def _close(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing is best effort; the request is over for the caller
            logger.debug("closing a stream failed", exc_info=True)


def _rag_conversation(request: ChatCompletionRequest) -> tuple[str | None, list[tuple[str, str]], str]:
    """The chat as the RAG prompt takes it: an optional first system (or developer) message, then
    user/assistant pairs, ending with the user message the context is retrieved for."""
    messages: list[ChatMessage] = list(request.messages)
    if not request.add_generation_prompt or request.continue_final_message:
        raise InvalidRequestError("collection", "retrieval needs add_generation_prompt=true and "
                                  "continue_final_message=false")
    system = None
    if messages[0].role in ("system", "developer"):
        system, messages = messages[0].text, messages[1:]
    roles = [m.role for m in messages]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(messages))]
    if not messages or roles != expected or roles[-1] != "user":
        raise InvalidRequestError("messages", "with a collection, messages must be an optional system message, "
                                  "then user and assistant turns alternating, ending with a user message")
    turns = [(messages[i].text, messages[i + 1].text) for i in range(0, len(messages) - 1, 2)]
    return system, turns, messages[-1].text

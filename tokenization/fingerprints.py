"""Tokenizer fingerprints: a sha256 over everything that decides which IDs a text gets.

Backend kind, vocabulary, merges/ranks, special tokens, normalization/pre-tokenization (for HF, the
whole serialized fast tokenizer) and the library version all go in. Two tokenizers that could disagree
on one text never share a fingerprint; the same tokenizer loaded in two processes always does. The
token cache puts the fingerprint into every key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["sha256_parts", "hf_fingerprint", "tiktoken_fingerprint"]


def sha256_parts(*parts: str | bytes) -> str:
    """sha256 hex of the parts, each length-prefixed so that ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def hf_fingerprint(tok: Any) -> str:
    """Fingerprint of a Hugging Face ``PreTrainedTokenizer[Fast]``."""
    import transformers

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        # The serialized fast tokenizer holds vocab, merges, added/special tokens, normalizer,
        # pre-tokenizer and post-processor: everything that decides the IDs.
        spec = backend.to_str()
        import tokenizers as hf_tokenizers

        lib = f"transformers={transformers.__version__};tokenizers={hf_tokenizers.__version__}"
    else:
        spec = json.dumps(sorted(tok.get_vocab().items()))
        lib = f"transformers={transformers.__version__}"
    specials = json.dumps(
        {"special": sorted(map(str, tok.all_special_tokens)), "added": sorted(tok.get_added_vocab().items())}
    )
    return sha256_parts("hf", type(tok).__name__, spec, specials, lib)


def tiktoken_fingerprint(enc: Any) -> str:
    """Fingerprint of a ``tiktoken.Encoding``: its ranks (the vocabulary and merges), split pattern and
    special tokens."""
    import tiktoken

    ranks = enc._mergeable_ranks  # noqa: SLF001 - the ranks ARE the vocabulary and merges
    h = hashlib.sha256()
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little"))
        h.update(len(token).to_bytes(2, "little"))
        h.update(token)
    specials = json.dumps(sorted(enc._special_tokens.items()))  # noqa: SLF001
    return sha256_parts(
        "tiktoken", enc.name, enc._pat_str, h.hexdigest(), specials,  # noqa: SLF001
        f"tiktoken={tiktoken.__version__}",
    )

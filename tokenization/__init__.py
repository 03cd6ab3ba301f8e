"""Tokenizer backends and their fingerprints: the bottom package both the token cache (``cache/``) and
the completions route (``llm/``) use. Imports nothing of ours."""

from tokenization.backends import HuggingFaceTokenizer, TiktokenTokenizer, TokenizerBackend
from tokenization.fingerprints import hf_fingerprint, sha256_parts, tiktoken_fingerprint

__all__ = [
    "HuggingFaceTokenizer",
    "TiktokenTokenizer",
    "TokenizerBackend",
    "hf_fingerprint",
    "sha256_parts",
    "tiktoken_fingerprint",
]

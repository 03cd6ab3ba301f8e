"""A tiny BPE tokenizer trained locally and saved as an HF folder: a stand-in for the served model's
tokenizer in unit tests (nothing is downloaded)."""

from __future__ import annotations


def build_hf_tokenizer_dir(path, extra_special: str = "<|im_end|>", vocab_size: int = 300) -> str:
    """A tiny BPE tokenizer trained locally and saved as an HF tokenizer folder (no hub access)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["[UNK]", extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        "the token cache keeps chunk token ids",
        "retrieval augmented generation with a prefix cache",
        "hello world, the quick brown fox jumps over the lazy dog",
    ] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token=extra_special)
    fast.save_pretrained(str(path))
    return str(path)


CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if not (loop.last and continue_final_message) %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_chatml_tokenizer(path):
    """The tiny BPE tokenizer as the token cache and the OpenAI routes use it (``HuggingFaceTokenizer``),
    with a ChatML chat template like SmolLM2's."""
    from tokenization import HuggingFaceTokenizer

    tokenizer = HuggingFaceTokenizer(build_hf_tokenizer_dir(path))
    tokenizer.tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer

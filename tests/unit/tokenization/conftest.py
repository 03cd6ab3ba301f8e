from __future__ import annotations

import pytest

from tests.fakes.fake_hf_tokenizer import build_hf_tokenizer_dir


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory) -> str:
    return build_hf_tokenizer_dir(tmp_path_factory.mktemp("hf_tok"))

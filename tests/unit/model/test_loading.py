"""model.loading: the context length read from a config, and its cap."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tnedit.architectures import architecture_for_config
from tnedit.errors import InputError
from tnedit.model import loading


def test_context_length_keys_and_cap():
    def lm(**cfg) -> SimpleNamespace:
        config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "intermediate_size": 16, **cfg}
        return SimpleNamespace(config=config, arch=architecture_for_config(config))

    assert loading.resolve_max_length(lm(max_position_embeddings=2048), None) == 2048
    assert loading.resolve_max_length(lm(n_positions=1024), None) == 1024
    assert loading.resolve_max_length(lm(n_ctx=512), None) == 512
    assert loading.resolve_max_length(lm(seq_length=300), None) == 300
    assert loading.resolve_max_length(lm(max_position_embeddings=131072), None) == loading.MAX_LENGTH_CAP
    assert loading.resolve_max_length(lm(), None) == loading.MAX_LENGTH_CAP  # ALiBi models name no context
    assert loading.resolve_max_length(lm(max_position_embeddings=131072), 8192) == 8192  # explicit may pass the cap
    with pytest.raises(InputError, match=r"--max-length 1025: exceeds .* 1024 tokens \(n_positions"):
        loading.resolve_max_length(lm(n_positions=1024), 1025)

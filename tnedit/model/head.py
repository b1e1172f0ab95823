"""The LM head on real tokens only: :class:`RealPositionsHead` trims padding before the vocabulary projection.

The head is most of a small multilingual model's compute (Gemma-3-270M: 168M of 268M parameters), so
skipping padding matters; post-head steps (soft-capping, scaling) are elementwise, so trimming first
changes no value. Evaluate's perplexity and tune's calibration losses read logits through it.
"""

from __future__ import annotations

from typing import Any

import torch

from tnedit.model.hooks import HookSet
from tnedit.model.loading import LoadedModel

IGNORE_INDEX = -100


class RealPositionsHead:
    """A pre-hook making the LM head project only the real (non-padding) positions: logits come back as
    (1, T_real, V) rows instead of (B, T, V). Set :attr:`mask` before each forward.
    """

    def __init__(self, lm: LoadedModel, hooks: HookSet):
        self.mask: torch.Tensor | None = None
        head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
        if head is not None:
            hooks.add_pre(head, self)

    def __call__(self, _module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x, mask = args[0], self.mask
        if mask is None or x.dim() != 3 or tuple(x.shape[:2]) != tuple(mask.shape):
            return None
        return (x[mask].unsqueeze(0), *args[1:])


def real_rows(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(T_real, V) logits at the real positions, whether the head was trimmed or not."""
    return logits[mask] if tuple(logits.shape[:2]) == tuple(mask.shape) else logits[0]


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(T_real,) next-token ids at the real positions, :data:`IGNORE_INDEX` at each row's last real token."""
    mask = attention_mask.bool()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX)
    return labels[mask]

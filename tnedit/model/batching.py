"""Batches of tokenized sentences under right padding, and the last real token of each row."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tnedit.errors import InputError


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last_index: torch.Tensor  # position of the last real token per row (right padding)
    rows: list[int]  # indices into the caller's sentence list


@dataclass
class EncodedTexts:
    """Token ids of sentences, and which of them were cut to ``max_length``."""

    ids: list[list[int]]
    truncated: list[bool]
    max_length: int | None = None

    @property
    def n_truncated(self) -> int:
        return sum(self.truncated)


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> EncodedTexts:
    """Tokenize ``texts`` (special tokens included), truncating to ``max_length`` and noting which were cut.

    Each sentence is first tokenized whole (verbose=False: a long one is expected here, not worth
    the tokenizer's warning); only the ones longer than ``max_length`` are tokenized again with the
    tokenizer's own truncation, so special tokens stay where the tokenizer puts them.
    """
    ids = [tokenizer(t, verbose=False)["input_ids"] for t in texts]
    truncated = [max_length is not None and len(x) > max_length for x in ids]
    for i, cut in enumerate(truncated):
        if cut:
            ids[i] = tokenizer(texts[i], truncation=True, max_length=max_length)["input_ids"]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise InputError(f"{len(empty)} sentence(s) tokenize to nothing, e.g. row {empty[0] + 1}: {texts[empty[0]]!r}")
    return EncodedTexts(ids, truncated, max_length)


def _batches(
    encoded: Sequence[Sequence[int]], batch_size: int, device: torch.device | str, pad: int,
    only: Callable[[int], bool] | None = None,
) -> Iterator[Batch]:
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    for index, start in enumerate(range(0, len(order), batch_size)):
        if only is not None and not only(index):
            continue
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, : len(encoded[i])] = 1
        yield Batch(ids.to(device), mask.to(device), (mask.sum(1) - 1).to(device), rows)


def encode_batches(
    tokenizer: Any,
    texts: Sequence[str] | EncodedTexts,
    batch_size: int,
    device: torch.device | str = "cpu",
    max_length: int | None = None,
    only: Callable[[int], bool] | None = None,
) -> Iterator[Batch]:
    """Right-padded batches of ``texts`` (or of already :func:`encode_texts`-ed ones), grouped by length.

    Rows come back in length order; ``Batch.rows`` maps them to the caller's indices. Statistics
    are sums, so order does not change them beyond fp64 rounding. ``only(batch index)`` keeps some of
    the batches (a rank's share, :meth:`tnedit.model.distributed.World.owns`); the others are not built.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    encoded = texts if isinstance(texts, EncodedTexts) else encode_texts(tokenizer, texts, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _batches(encoded.ids, batch_size, device, pad, only)


def gather_last(x: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """(B, T, D) → (B, D) at each row's last real token.

    A flattened (B·T, D) input (OPT's decoder layer reshapes before its MLP) is viewed as (B, T, D).
    """
    x = token_view(x, last_index.shape[0])
    return x[torch.arange(x.shape[0], device=x.device), last_index.to(x.device)]


def token_view(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``x`` as (B, T, D): a flattened (B·T, D) input (OPT's decoder layer reshapes before its MLP) is viewed."""
    return x.view(batch_size, -1, x.shape[-1]) if x.dim() == 2 else x


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size

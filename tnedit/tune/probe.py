"""Calibration losses of an edit, measured by masked forward passes and differentiated for attribution.

An edit here is a dense factor matrix ``[layers, intermediate]`` (1 = untouched), applied as a pre-hook
on every output projection: the input a becomes f·a, which is what baking f into the projection's
column does. :meth:`Probe.loss` is a forward pass; :meth:`Probe.attribution` adds one backward pass
and returns, per neuron, Σ_tokens a_i·∂L/∂a_i at the edited point (a the unedited activation): the
first-order change of the loss if neuron i's factor moved from its current value by one unit of a_i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tnedit.model.batching import Batch, encode_batches
from tnedit.model.head import IGNORE_INDEX, RealPositionsHead, next_token_labels, real_rows
from tnedit.model.hooks import HookSet
from tnedit.model.loading import LoadedModel
from tnedit.reporting import Reporter, resolve_reporter


@dataclass
class CalibrationTexts:
    """One language's sentences, batched once, and how many next tokens they predict."""

    language: str
    sentences: list[str]
    batches: list[Batch]
    n_targets: int


def encode_calibration(lm: LoadedModel, language: str, sentences: Sequence[str], batch_size: int,
                       max_length: int) -> CalibrationTexts:
    batches = list(encode_batches(lm.tokenizer, list(sentences), batch_size, lm.device, max_length))
    n_targets = sum(int((next_token_labels(b.input_ids, b.attention_mask) != IGNORE_INDEX).sum()) for b in batches)
    return CalibrationTexts(language, list(sentences), batches, n_targets)


def identity_factors(lm: LoadedModel) -> np.ndarray:
    return np.ones((lm.num_layers, lm.intermediate_size), dtype=np.float32)


class _Scaling:
    """Pre-hooks that scale each output projection's input by its layer's factors; optionally keep the
    unedited and edited inputs of each layer for :func:`torch.autograd.grad`."""

    def __init__(self, lm: LoadedModel, factors: np.ndarray, hooks: HookSet, keep_inputs: bool):
        self.originals: dict[int, torch.Tensor] = {}
        self.edited: dict[int, torch.Tensor] = {}
        self.keep_inputs = keep_inputs
        for layer in range(lm.num_layers):
            row = factors[layer]
            scale = None if bool(np.all(row == 1.0)) else torch.from_numpy(row.copy()).to(lm.device)
            hooks.add_pre(lm.out_proj(layer), self._hook(layer, scale))

    def _hook(self, layer: int, scale: torch.Tensor | None):  # type: ignore[no-untyped-def]
        def hook(_module: object, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            x = args[0]
            edited = x if scale is None else x * scale.to(x.dtype)
            if self.keep_inputs:
                self.originals[layer] = x.detach()
                self.edited[layer] = edited
            return None if scale is None else (edited, *args[1:])

        return hook


def _batch_nll(lm: LoadedModel, head: RealPositionsHead, batch: Batch) -> torch.Tensor:
    """Summed next-token NLL of one batch (float32), through the trimmed head."""
    mask = batch.attention_mask.bool()
    head.mask = mask
    logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    rows = real_rows(logits, mask)
    rows = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    return F.cross_entropy(rows, next_token_labels(batch.input_ids, batch.attention_mask).to(rows.device),
                           ignore_index=IGNORE_INDEX, reduction="sum")


class Probe:
    """Mean next-token NLL of calibration texts under an edit, and its attribution to every neuron."""

    def __init__(self, lm: LoadedModel, reporter: Reporter | None = None):
        self.lm = lm
        self.reporter = resolve_reporter(reporter)

    def loss(self, texts: CalibrationTexts, factors: np.ndarray) -> float:
        """Mean NLL per predicted token of ``texts`` with the edit ``factors``."""
        total = 0.0
        with HookSet() as hooks, torch.inference_mode():
            _Scaling(self.lm, factors, hooks, keep_inputs=False)
            head = RealPositionsHead(self.lm, hooks)
            for batch in texts.batches:
                total += float(_batch_nll(self.lm, head, batch))
        return total / texts.n_targets

    def attribution(self, texts: CalibrationTexts, factors: np.ndarray) -> tuple[float, np.ndarray]:
        """(mean NLL, Σ_t a·∂L/∂(f·a) per neuron as float64 ``[layers, intermediate]``) under ``factors``."""
        total = 0.0
        grads = np.zeros(factors.shape, dtype=np.float64)
        with HookSet() as hooks, torch.enable_grad():
            scaling = _Scaling(self.lm, factors, hooks, keep_inputs=True)
            head = RealPositionsHead(self.lm, hooks)
            hooks.add_post(self.lm.model.get_input_embeddings(), _require_grad)
            for batch in texts.batches:
                nll = _batch_nll(self.lm, head, batch)
                layers = sorted(scaling.edited)
                inputs = [scaling.edited[layer] for layer in layers]
                wrt = torch.autograd.grad(nll / texts.n_targets, inputs)
                for layer, grad in zip(layers, wrt, strict=True):
                    product = (scaling.originals[layer].double() * grad.double()).reshape(-1, grad.shape[-1])
                    grads[layer] += product.sum(0).cpu().numpy()
                total += float(nll.detach())
                scaling.originals.clear()
                scaling.edited.clear()
        return total / texts.n_targets, grads


def _require_grad(_module: object, _args: object, output: torch.Tensor) -> torch.Tensor | None:
    """Make the embeddings a graph input when no parameter requires grad, so the MLP inputs get gradients."""
    if output.requires_grad:
        return None
    return output.detach().requires_grad_(True)

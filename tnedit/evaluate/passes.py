"""The batched forward passes of an evaluation: one pass per language, each batch once per condition.

A condition is the original model, the original with an edit applied as a runtime hook, or a baked
checkpoint (then loaded as its own model). :func:`forward` runs each batch once per condition sharing
one loaded model, collecting last-token states, NLL and KL/top-1 against the original. Greedy
generation is in :mod:`tnedit.evaluate.generation`, summaries in :mod:`tnedit.evaluate.summary`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tnedit.edit.runtime import RuntimeEdit
from tnedit.edit.spec import EditSpec, Positions
from tnedit.errors import InputError
from tnedit.evaluate.metrics import (
    kl_divergence,
    kl_from_topk,
    next_token_nll,
    real_logprobs,
    top1_agreement,
    top1_from_topk,
    topk_logprobs,
)
from tnedit.model.batching import Batch, encode_batches, num_batches
from tnedit.model.capture import LastTokenCapture
from tnedit.model.distributed import SINGLE, World
from tnedit.model.head import RealPositionsHead, real_rows
from tnedit.model.hooks import HookSet
from tnedit.model.loading import LoadedModel, resolve_max_length
from tnedit.reporting import Reporter, resolve_reporter

# (language, batch index) -> (input ids, top-k token ids, top-k log-probabilities) of the original
LogprobCache = dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class Condition:
    name: str  # original | edited | control
    kind: str  # original | hook | baked
    spec: EditSpec | None = None  # the edit for hooks, None otherwise
    positions: Positions | None = None  # hook positions; None for the original, "all" for a baked edit
    n_neurons: int = 0


# The Accumulator's per-language sums and the dtype the ranks add them in.
_PER_LANGUAGE_SUMS = {"nll": torch.float64, "n_tokens": torch.int64, "kl": torch.float64, "top1": torch.int64,
                      "n_positions": torch.int64}


class Accumulator:
    """Per-condition results while batches stream through: states, NLL, KL, top-1."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes = sizes
        self.h: dict[str, np.ndarray] = {}
        self.nll: dict[str, float] = defaultdict(float)
        self.n_tokens: dict[str, int] = defaultdict(int)
        self.kl: dict[str, float] = defaultdict(float)
        self.top1: dict[str, int] = defaultdict(int)
        self.n_positions: dict[str, int] = defaultdict(int)
        self.kl_method: str | None = None

    def add_up(self, world: World) -> None:
        """Every rank's results added (each sentence's states were filled in by one rank, zeros elsewhere)."""
        if not world.is_distributed:
            return
        shapes = {lang: shape for ranks in world.all_gather({k: v.shape for k, v in self.h.items()})
                  for lang, shape in ranks.items()}
        for lang, shape in shapes.items():  # a rank that ran no batch of a language adds zeros
            self.h.setdefault(lang, np.zeros(shape, dtype=np.float32))
        sums: dict[str, Any] = {f"h/{lang}": torch.from_numpy(h) for lang, h in sorted(self.h.items())}
        for name, dtype in _PER_LANGUAGE_SUMS.items():
            values = getattr(self, name)
            sums.update({f"{name}/{lang}": torch.tensor([values[lang]], dtype=dtype) for lang in self.sizes})
        added = world.all_reduce(sums)
        for lang in self.h:
            self.h[lang] = added[f"h/{lang}"].numpy()
        for name in _PER_LANGUAGE_SUMS:
            getattr(self, name).update({lang: added[f"{name}/{lang}"].item() for lang in self.sizes})
        self.kl_method = world.broadcast(self.kl_method)  # rank 0 runs the first batch, so it has one

    def add_states(self, lang: str, rows: list[int], h: dict[int, Any]) -> None:
        if lang not in self.h:
            first = next(iter(h.values()))
            self.h[lang] = np.zeros((len(h), self.sizes[lang], first.shape[-1]), dtype=np.float32)
        for layer, tensor in h.items():
            self.h[lang][layer, rows] = tensor.float().cpu().numpy()


def _chunked_sum(fn: Callable[..., Any], *tensors: Any, rows: int = 64) -> float:
    """Σ fn(rows) over row chunks, so (rows × vocab) temporaries stay small."""
    n = tensors[0].shape[0]
    return sum(float(fn(*(t[i : i + rows] for t in tensors)).double().sum()) for i in range(0, n, rows))


@contextmanager
def edited(lm: LoadedModel, cond: Condition, attention_mask: Any) -> Iterator[None]:
    """``cond``'s edit hooked into ``lm`` for the ``with`` block (nothing for the original or a baked model)."""
    if cond.spec is None:
        yield
        return
    with RuntimeEdit(lm.model, cond.spec, cond.positions, arch=lm.arch) as hook:  # type: ignore[arg-type]
        hook.set_attention_mask(attention_mask)
        yield


@dataclass
class _Pass:
    """What every batch of one :func:`forward` call shares."""

    lm: LoadedModel
    capture: LastTokenCapture
    conds: list[Condition]
    accs: dict[str, Accumulator]
    kl_top_k: int
    cache: LogprobCache | None
    reference: LogprobCache | None


def forward(
    lm: LoadedModel,
    texts: dict[str, list[str]],
    conds: list[Condition],
    accs: dict[str, Accumulator],
    *,
    batch_size: int,
    kl_top_k: int,
    cache: LogprobCache | None = None,
    reference: LogprobCache | None = None,
    reporter: Reporter | None = None,
    world: World = SINGLE,
) -> None:
    """Each batch once per condition: last-token states, NLL, and KL/top-1 against the original.

    The original's log-probabilities of a batch live only until the batch's other conditions are
    done (exact KL). With ``cache`` they are also kept as top-``kl_top_k`` rows for a later model;
    with ``reference`` KL is computed against such a cache. Under a launcher the ranks of ``world``
    share the batches (each keeps the cache of its own) and add up the conditions' results at the end.
    """
    reporter = resolve_reporter(reporter)
    max_length = resolve_max_length(lm, None)  # a sentence past the context would index past the positions
    names = "+".join(c.name for c in conds)
    with LastTokenCapture(lm, ["h"]) as capture, HookSet() as hooks, torch.inference_mode():
        head = RealPositionsHead(lm, hooks)
        run = _Pass(lm, capture, conds, accs, kl_top_k, cache, reference)
        for lang, sentences in texts.items():
            total = num_batches(len(sentences), batch_size)
            batches = encode_batches(lm.tokenizer, sentences, batch_size, lm.device, max_length, only=world.owns)
            with reporter.progress(total, f"evaluate {lang} ({names})") as bar:
                for step, index in world.shared_steps(total):
                    if index is not None:
                        batch = next(batches)
                        head.mask = batch.attention_mask.bool()
                        _run_batch(run, lang, index, batch)
                    bar.update(world.step_batches(step, total))
            head.mask = None
    for cond in conds:
        accs[cond.name].add_up(world)


def _run_batch(run: _Pass, lang: str, index: int, batch: Batch) -> None:
    """One batch under every condition; the original's log-probabilities serve the others, then go."""
    reference_logp = None
    for cond in run.conds:
        logp = _run_condition(run, cond, lang, batch)
        if cond.name == "original":
            reference_logp = logp
            if run.cache is not None:
                run.cache[(lang, index)] = (batch.input_ids.cpu(), *topk_logprobs(logp, run.kl_top_k))
            continue
        _compare_to_reference(run, run.accs[cond.name], lang, (lang, index), batch, logp, reference_logp)
    del reference_logp


def _run_condition(run: _Pass, cond: Condition, lang: str, batch: Batch) -> torch.Tensor:
    """States and NLL of ``batch`` under ``cond``; returns its log-probabilities at the real positions."""
    with edited(run.lm, cond, batch.attention_mask):
        states = run.capture.run(batch, logits=True)
    acc = run.accs[cond.name]
    acc.add_states(lang, batch.rows, states.h)
    logits = states.logits
    states.logits = None
    mask = batch.attention_mask.bool()
    rows = real_rows(logits, mask)
    logp = real_logprobs(rows)
    del logits, rows
    nll, n = next_token_nll(logp, batch.input_ids, batch.attention_mask)
    acc.nll[lang] += nll
    acc.n_tokens[lang] += n
    acc.n_positions[lang] += int(logp.shape[0])
    return logp


def _compare_to_reference(run: _Pass, acc: Accumulator, lang: str, key: tuple[str, int], batch: Batch,
                          logp: torch.Tensor, reference_logp: torch.Tensor | None) -> None:
    """KL(original ‖ condition) and top-1 agreement: exact in the same pass, else against the cached top-k."""
    if reference_logp is not None:
        kl = _chunked_sum(kl_divergence, reference_logp, logp)
        agree = _chunked_sum(top1_agreement, reference_logp, logp)
        acc.kl_method = "exact"
    else:
        if run.reference is None:
            raise ValueError("forward: a condition besides the original needs it in the pass or a reference cache")
        ids, index, top = run.reference[key]
        if not torch.equal(ids, batch.input_ids.cpu()):
            raise InputError("evaluate: batches of the two models differ; cannot compare")
        kl = _chunked_sum(kl_from_topk, index, top, logp)
        agree = _chunked_sum(top1_from_topk, index, logp)
        acc.kl_method = "exact" if index.shape[-1] >= logp.shape[-1] else f"top-{index.shape[-1]}+rest"
    acc.kl[lang] += kl
    acc.top1[lang] += int(agree)

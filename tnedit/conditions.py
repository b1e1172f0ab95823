"""Running evaluation conditions over the data: one batched pass per language, and generation.

A condition is the original model, or the original with an edit applied as a runtime hook, or a
baked checkpoint (then loaded as its own model). :func:`forward` runs each batch once per condition
sharing one loaded model, collecting last-token states, NLL and KL/top-1 against the original;
:func:`run_generation` does the greedy continuations and QA. Summaries and reports stay in
:mod:`tnedit.evaluate`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tnedit import metrics as M

if TYPE_CHECKING:
    from tnedit.evaluate import EvaluateSettings

# "Question"/"Answer" labels of the QA prompt, per language.
QA_LABELS: dict[str, tuple[str, str]] = {
    "en": ("Question", "Answer"),
    "ja": ("質問", "答え"),
    "ko": ("질문", "답변"),
    "zh": ("问题", "答案"),
    "fr": ("Question", "Réponse"),
    "de": ("Frage", "Antwort"),
    "es": ("Pregunta", "Respuesta"),
    "it": ("Domanda", "Risposta"),
    "nl": ("Vraag", "Antwoord"),
    "ru": ("Вопрос", "Ответ"),
}


@dataclass
class Condition:
    name: str  # original | edited | control
    source: str  # original | hook | baked
    spec: Any = None  # EditSpec for hooks, None otherwise
    positions: str | None = None  # hook positions; None for the original, "all" for a baked edit
    n_neurons: int = 0


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
        self.texts: dict[str, Any] = {}

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
def _edited(lm: Any, cond: Condition, attention_mask: Any) -> Iterator[None]:
    if cond.spec is None:
        yield
        return
    from tnedit.edit import RuntimeEdit

    with RuntimeEdit(lm.model, cond.spec, cond.positions, arch=lm.arch) as hook:  # type: ignore[arg-type]
        hook.set_attention_mask(attention_mask)
        yield


@contextmanager
def _head_on_real_positions(lm: Any) -> Iterator[dict[str, Any]]:
    """Make the LM head project only the real (non-padding) positions: logits come back as
    (1, T_real, V) rows instead of (B, T, V). Set ``state["mask"]`` before each forward.

    The head is most of a small multilingual model's compute (Gemma-3-270M: 168M of 268M
    parameters), so skipping padding matters; post-head steps (soft-capping, scaling) are elementwise.
    """
    state: dict[str, Any] = {"mask": None}
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None

    def hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x, mask = args[0], state["mask"]
        if mask is None or x.dim() != 3 or tuple(x.shape[:2]) != tuple(mask.shape):
            return None
        return (x[mask].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(hook) if head is not None else None
    try:
        yield state
    finally:
        if handle is not None:
            handle.remove()


def forward(
    lm: Any,
    texts: dict[str, list[str]],
    conds: list[Condition],
    accs: dict[str, Accumulator],
    s: EvaluateSettings,
    cache: dict[tuple[str, int], Any] | None = None,
    reference: dict[tuple[str, int], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Each batch once per condition: last-token states, NLL, and KL/top-1 against the original.

    The original's log-probabilities of a batch live only until the batch's other conditions are
    done (exact KL). With ``cache`` they are also kept as top-k rows for a later model; with
    ``reference`` KL is computed against such a cache.
    """
    import torch
    from tqdm.auto import tqdm

    from tnedit.model.batching import encode_batches
    from tnedit.model.capture import LastTokenCapture
    from tnedit.model.loading import resolve_max_length

    max_length = resolve_max_length(lm, None)  # a sentence past the context would index past the positions
    with LastTokenCapture(lm, ["h"]) as cap, _head_on_real_positions(lm) as head, torch.inference_mode():
        for lang, sentences in texts.items():
            batches = list(encode_batches(lm.tokenizer, sentences, s.batch_size, lm.device, max_length))
            bar = tqdm(
                batches,
                desc=f"evaluate {lang} ({'+'.join(c.name for c in conds)})",
                unit="batch",
                disable=progress is None,
                leave=False,
            )
            for bi, batch in enumerate(bar):
                ref = None
                key = (lang, bi)
                mask = batch.attention_mask.bool()
                head["mask"] = mask
                for cond in conds:
                    with _edited(lm, cond, batch.attention_mask):
                        states = cap.run(batch, logits=True)
                    acc = accs[cond.name]
                    acc.add_states(lang, batch.rows, states.h)
                    logits = states.logits
                    states.logits = None
                    rows = logits[mask] if tuple(logits.shape[:2]) == tuple(mask.shape) else logits[0]
                    logp = M.real_logprobs(rows)
                    del logits, rows
                    nll, n = M.next_token_nll(logp, batch.input_ids, batch.attention_mask)
                    acc.nll[lang] += nll
                    acc.n_tokens[lang] += n
                    acc.n_positions[lang] += int(logp.shape[0])
                    if cond.name == "original":
                        ref = logp
                        if cache is not None:
                            cache[key] = (batch.input_ids.cpu(), *M.topk_logprobs(logp, s.kl_top_k))
                        continue
                    if ref is not None:
                        kl = _chunked_sum(M.kl_divergence, ref, logp)
                        agree = _chunked_sum(M.top1_agreement, ref, logp)
                        acc.kl_method = "exact"
                    else:
                        assert reference is not None
                        ids, index, top = reference[key]
                        if not torch.equal(ids, batch.input_ids.cpu()):
                            raise RuntimeError("evaluate: batches of the two models differ; cannot compare")
                        kl = _chunked_sum(M.kl_from_topk, index, top, logp)
                        agree = _chunked_sum(M.top1_from_topk, index, logp)
                        acc.kl_method = "exact" if index.shape[-1] >= logp.shape[-1] else f"top-{index.shape[-1]}+rest"
                    acc.kl[lang] += kl
                    acc.top1[lang] += int(agree)
                del ref
            head["mask"] = None


def _left_padded(tokenizer: Any, prompts: Sequence[str], device: Any, max_prompt: int) -> tuple[Any, Any]:
    """Left-padded prompt ids; a prompt longer than ``max_prompt`` keeps its end, where the question is."""
    import torch

    encoded = [tokenizer(p)["input_ids"][-max_prompt:] for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, e in enumerate(encoded):
        ids[r, width - len(e) :] = torch.tensor(e, dtype=torch.long)
        mask[r, width - len(e) :] = 1
    return ids.to(device), mask.to(device)


class _LineDone:
    """Stopping criterion: a row is done once its answer (leading whitespace skipped) has a newline.

    Cheaper than ``stop_strings``, which scans the whole vocabulary on every generate call.
    """

    def __init__(self, tokenizer: Any, start: int):
        self.tokenizer = tokenizer
        self.start = start

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([("\n" in t.lstrip()) for t in texts], dtype=torch.bool, device=input_ids.device)


def generate(
    lm: Any,
    cond: Condition,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    stop_at_newline: bool = False,
    desc: str | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` under ``cond`` (left-padded batches, edits per cond)."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from tnedit.model.loading import resolve_max_length
    from tnedit.errors import InputError

    if not prompts or max_new_tokens == 0:
        return ["" for _ in prompts]
    context = resolve_max_length(lm, None)
    if max_new_tokens >= context:
        raise InputError(f"{max_new_tokens} new tokens (--max-new-tokens, --qa-max-new-tokens) leave no room for "
                         f"a prompt in the model's context "
                         f"of {context} tokens")
    tok = lm.tokenizer
    eos = getattr(lm.model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tok.eos_token_id
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos
    )
    kwargs: dict[str, Any] = {}
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out = [""] * len(prompts)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=desc is None, leave=False):
        rows = order[start : start + batch_size]
        ids, mask = _left_padded(tok, [prompts[i] for i in rows], lm.device, context - max_new_tokens)
        if stop_at_newline:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_LineDone(tok, ids.shape[1])])
        with _edited(lm, cond, mask), torch.inference_mode():
            gen = lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **kwargs)
        for r, i in enumerate(rows):
            out[i] = tok.decode(gen[r, ids.shape[1] :], skip_special_tokens=True)
    return out


def qa_prompt(lang: str, shots: Sequence[Any], question: str) -> str:
    q_label, a_label = QA_LABELS.get(lang, ("Q", "A"))
    parts = [f"{q_label}: {shot.question}\n{a_label}: {shot.answers[0]}\n\n" for shot in shots]
    return "".join(parts) + f"{q_label}: {question}\n{a_label}:"


def run_generation(
    lm: Any,
    cond: Condition,
    texts: dict[str, list[str]],
    qa_sets: dict[str, Any],
    s: EvaluateSettings,
    show: bool = False,
) -> dict[str, Any]:
    """Continuations (samples + output-language share) and QA, each one batched generate call:
    on CPU a decoding step costs about one read of the LM head whatever the batch size."""
    out: dict[str, Any] = {"generations": {}, "output_language": {}, "qa": {}}
    n_prompts = max(s.n_gen, s.n_langid)
    prompts = [(lang, p) for lang, sentences in texts.items() for p in sentences[:n_prompts]]
    outputs = generate(
        lm,
        cond,
        [p for _, p in prompts],
        s.max_new_tokens,
        s.gen_batch_size,
        desc=f"generate ({cond.name})" if show else None,
    )
    for lang in texts:
        mine = [(p, o) for (lg, p), o in zip(prompts, outputs, strict=True) if lg == lang]
        out["generations"][lang] = [{"prompt": p, "output": o} for p, o in mine[: s.n_gen]]
        out["output_language"][lang] = M.output_language_share([o for _, o in mine[: s.n_langid]], lang)
    qa_rows = [
        (lang, it, qa_prompt(lang, shots, it.question)) for lang, (shots, items) in qa_sets.items() for it in items
    ]
    raw = generate(
        lm,
        cond,
        [p for _, _, p in qa_rows],
        s.qa_max_new_tokens,
        s.gen_batch_size,
        stop_at_newline=True,
        desc=f"QA ({cond.name})" if show else None,
    )
    for lang in qa_sets:
        scored = []
        for (lg, it, _), text in zip(qa_rows, raw, strict=True):
            if lg != lang:
                continue
            answer = text.strip().split("\n")[0].strip()
            f1, em = M.qa_scores(answer, it.answers, lang)
            scored.append({"id": it.id, "prediction": answer, "f1": f1, "em": em})
        out["qa"][lang] = {
            "f1": float(np.mean([x["f1"] for x in scored])) if scored else None,
            "em": float(np.mean([x["em"] for x in scored])) if scored else None,
            "n": len(scored),
            "items": scored,
        }
    return out

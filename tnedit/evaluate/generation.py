"""Greedy generation under a condition: continuations of the evaluation sentences, few-shot QA, and
last-token states with the paper's last-position edit (:func:`last_token_states`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, StoppingCriteriaList

from tnedit.edit.spec import make_edit_spec
from tnedit.errors import InputError
from tnedit.evaluate.answers import qa_scores
from tnedit.evaluate.langid import output_language_share
from tnedit.evaluate.passes import Condition, edited
from tnedit.evaluate.settings import GenerationSettings
from tnedit.formats.neurons import NeuronSet
from tnedit.model.batching import encode_batches, num_batches
from tnedit.model.capture import LastTokenCapture
from tnedit.model.distributed import SINGLE, World
from tnedit.model.loading import LoadedModel, resolve_max_length
from tnedit.reporting import Reporter, resolve_reporter

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


def _left_padded(tokenizer: Any, prompts: Sequence[str], device: Any, max_prompt: int) -> tuple[Any, Any]:
    """Left-padded prompt ids; a prompt longer than ``max_prompt`` keeps its end, where the question is."""
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
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([("\n" in t.lstrip()) for t in texts], dtype=torch.bool, device=input_ids.device)


def _generation_config(lm: LoadedModel, max_new_tokens: int) -> GenerationConfig:
    eos = getattr(lm.model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=eos
    )


def generate(
    lm: LoadedModel,
    cond: Condition,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    stop_at_newline: bool = False,
    *,
    desc: str = "generate",
    reporter: Reporter | None = None,
    world: World = SINGLE,
) -> list[str]:
    """Greedy continuations of ``prompts`` under ``cond`` (left-padded batches, edits per cond).

    Under a launcher the ranks of ``world`` share the batches, built as in one process, and every rank
    returns every continuation."""
    if not prompts or max_new_tokens == 0:
        return ["" for _ in prompts]
    context = resolve_max_length(lm, None)
    if max_new_tokens >= context:
        raise InputError(f"{max_new_tokens} new tokens (--max-new-tokens, --qa-max-new-tokens) leave no room for "
                         f"a prompt in the model's context "
                         f"of {context} tokens")
    tok = lm.tokenizer
    config = _generation_config(lm, max_new_tokens)
    kwargs: dict[str, Any] = {}
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    mine: dict[int, str] = {}
    total = num_batches(len(order), batch_size)
    with resolve_reporter(reporter).progress(total, desc) as bar:
        for step, index in world.shared_steps(total):
            if index is not None:
                rows = order[index * batch_size : (index + 1) * batch_size]
                ids, mask = _left_padded(tok, [prompts[i] for i in rows], lm.device, context - max_new_tokens)
                if stop_at_newline:
                    kwargs["stopping_criteria"] = StoppingCriteriaList([_LineDone(tok, ids.shape[1])])
                with edited(lm, cond, mask), torch.inference_mode():
                    gen = lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **kwargs)
                mine.update({i: tok.decode(gen[r, ids.shape[1] :], skip_special_tokens=True)
                             for r, i in enumerate(rows)})
            bar.update(world.step_batches(step, total))
    outputs = {i: text for rank_outputs in world.all_gather(mine) for i, text in rank_outputs.items()}
    return [outputs[i] for i in range(len(prompts))]


def qa_prompt(lang: str, shots: Sequence[Any], question: str) -> str:
    q_label, a_label = QA_LABELS.get(lang, ("Q", "A"))
    parts = [f"{q_label}: {shot.question}\n{a_label}: {shot.answers[0]}\n\n" for shot in shots]
    return "".join(parts) + f"{q_label}: {question}\n{a_label}:"


def run_generation(
    lm: LoadedModel,
    cond: Condition,
    texts: dict[str, list[str]],
    qa_sets: dict[str, Any],
    generation: GenerationSettings,
    *,
    reporter: Reporter | None = None,
    world: World = SINGLE,
) -> dict[str, Any]:
    """Continuations (samples + output-language share) and QA, each one batched generate call:
    on CPU a decoding step costs about one read of the LM head whatever the batch size."""
    g = generation
    out: dict[str, Any] = {"generations": {}, "output_language": {}, "qa": {}}
    n_prompts = max(g.n_gen, g.n_langid)
    prompts = [(lang, p) for lang, sentences in texts.items() for p in sentences[:n_prompts]]
    outputs = generate(lm, cond, [p for _, p in prompts], g.max_new_tokens, g.gen_batch_size,
                       desc=f"generate ({cond.name})", reporter=reporter, world=world)
    for lang in texts:
        mine = [(p, o) for (lg, p), o in zip(prompts, outputs, strict=True) if lg == lang]
        out["generations"][lang] = [{"prompt": p, "output": o} for p, o in mine[: g.n_gen]]
        out["output_language"][lang] = output_language_share([o for _, o in mine[: g.n_langid]], lang,
                                                             detector=g.langid, languages=list(texts))
    qa_rows = [
        (lang, it, qa_prompt(lang, shots, it.question)) for lang, (shots, items) in qa_sets.items() for it in items
    ]
    raw = generate(lm, cond, [p for _, _, p in qa_rows], g.qa_max_new_tokens, g.gen_batch_size,
                   stop_at_newline=True, desc=f"QA ({cond.name})", reporter=reporter, world=world)
    for lang in qa_sets:
        out["qa"][lang] = _qa_result([(it, text) for (lg, it, _), text in zip(qa_rows, raw, strict=True) if lg == lang],
                                     lang)
    return out


def _qa_result(answered: list[tuple[Any, str]], lang: str) -> dict[str, Any]:
    """Token F1 and exact match of each generated answer (its first line), and their means."""
    scored = []
    for item, text in answered:
        answer = text.strip().split("\n")[0].strip()
        f1, em = qa_scores(answer, item.answers, lang)
        scored.append({"id": item.id, "prediction": answer, "f1": f1, "em": em})
    return {
        "f1": float(np.mean([x["f1"] for x in scored])) if scored else None,
        "em": float(np.mean([x["em"] for x in scored])) if scored else None,
        "n": len(scored),
        "items": scored,
    }


def last_token_states(lm: LoadedModel, texts: Sequence[str], neurons: NeuronSet | None = None,
                      batch_size: int = 16) -> torch.Tensor:
    """[sentences, layers, hidden] raw decoder-layer outputs at the last token, float64.

    ``neurons`` (a NeuronSet, or None) are zeroed at the last token only, as the paper's
    representation analyses do; rows come back in the order of ``texts``. Sentences longer than the
    model's context are cut to it (see :func:`resolve_max_length`).
    """
    layers = list(range(lm.num_layers))
    spec = make_edit_spec(neurons) if neurons is not None else None
    cond = Condition("edited", "hook", spec, "last")
    out: dict[int, torch.Tensor] = {}
    with LastTokenCapture(lm, ["h"], layers) as capture:
        for batch in encode_batches(lm.tokenizer, texts, batch_size, lm.device, resolve_max_length(lm, None)):
            with edited(lm, cond, batch.attention_mask):
                states = capture.run(batch)
            for j, row in enumerate(batch.rows):
                out[row] = torch.stack([states.h[layer][j].double() for layer in layers])
    return torch.stack([out[i] for i in range(len(texts))])

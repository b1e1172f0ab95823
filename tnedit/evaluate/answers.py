"""QA answer scoring, SQuAD-style (normalised token F1 and exact match), per character for CJK. Pure functions."""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

from tnedit.evaluate.langid import script_of

CJK_LANGS = frozenset({"ja", "zh", "ko"})

ARTICLES: dict[str, frozenset[str]] = {
    "en": frozenset({"a", "an", "the"}),
    "fr": frozenset({"le", "la", "les", "l", "un", "une", "des"}),
    "de": frozenset({"der", "die", "das", "den", "dem", "des", "ein", "eine", "einen", "einem", "einer", "eines"}),
    "es": frozenset({"el", "la", "los", "las", "un", "una", "unos", "unas"}),
    "it": frozenset({"il", "lo", "la", "i", "gli", "le", "l", "un", "uno", "una"}),
    "nl": frozenset({"de", "het", "een"}),
}


def _is_cjk_char(ch: str) -> bool:
    return script_of(ch) in ("kana", "han", "hangul")


def normalize_answer(text: str, lang: str) -> str:
    """Lower-case, drop punctuation (ASCII and Unicode P*), drop articles, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if (ch in string.punctuation or unicodedata.category(ch).startswith("P")) else ch for ch in text)
    articles = ARTICLES.get(lang, frozenset())
    return " ".join(w for w in text.split() if w not in articles)


def answer_tokens(text: str, lang: str) -> list[str]:
    """Tokens for F1: whitespace words; for ja/zh/ko every CJK character is its own token."""
    norm = normalize_answer(text, lang)
    if lang not in CJK_LANGS:
        return norm.split()
    tokens: list[str] = []
    for word in norm.split():
        run = ""
        for ch in word:
            if _is_cjk_char(ch):
                if run:
                    tokens.append(run)
                    run = ""
                tokens.append(ch)
            else:
                run += ch
        if run:
            tokens.append(run)
    return tokens


def token_f1(prediction: str, gold: str, lang: str) -> float:
    pred, ref = answer_tokens(prediction, lang), answer_tokens(gold, lang)
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str, lang: str) -> float:
    return float(answer_tokens(prediction, lang) == answer_tokens(gold, lang))


def qa_scores(prediction: str, golds: Iterable[str], lang: str) -> tuple[float, float]:
    """(F1, EM), each the maximum over the gold answers."""
    golds = list(golds)
    if not golds:
        raise ValueError("qa_scores: no gold answers")
    return (
        max(token_f1(prediction, g, lang) for g in golds),
        max(exact_match(prediction, g, lang) for g in golds),
    )


"""Output-language identification by script and stop words: which language a greedy continuation is in. Pure."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x3040, 0x30FF, "kana"),
    (0x31F0, 0x31FF, "kana"),
    (0xFF66, 0xFF9F, "kana"),
    (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"),
    (0xF900, 0xFAFF, "han"),
    (0x20000, 0x2FA1F, "han"),
    (0xAC00, 0xD7AF, "hangul"),
    (0x1100, 0x11FF, "hangul"),
    (0x3130, 0x318F, "hangul"),
    (0x0400, 0x052F, "cyrillic"),
)

LATIN_LANGS = ("en", "fr", "de", "es", "it", "nl")
SCRIPT_LANGS = {"ja": "ja", "ko": "ko", "zh": "zh", "ru": "ru"}

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and is are was of to in that it you i he she we they this with for not be have".split()),
    "fr": frozenset("le la les et est un une des du je il elle nous vous pas que qui dans pour avec ce sont".split()),
    "de": frozenset("der die das und ist nicht ich ein eine zu sie es mit den auf sich dem ich wir sind auch".split()),
    "es": frozenset("el la los las y es un una que no en por con se del lo para está son muy".split()),
    "it": frozenset("il lo la gli le e è un una di che non per con sono del della mi io ho".split()),
    "nl": frozenset("de het een en is van niet ik dat je op te met zijn ze er wat hij maar".split()),
}
# Letters that only some Latin-script languages use: a weak extra vote each.
_LETTER_HINTS: dict[str, str] = {"ß": "de", "ä": "de", "ö": "de", "ü": "de", "ñ": "es", "¿": "es", "¡": "es",
                                 "ç": "fr", "œ": "fr", "ê": "fr", "â": "fr", "î": "fr", "ò": "it", "ù": "it"}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def script_of(ch: str) -> str | None:
    cp = ord(ch)
    for lo, hi, name in _RANGES:
        if lo <= cp <= hi:
            return name
    if ch.isalpha():
        return "latin" if "LATIN" in unicodedata.name(ch, "") else "other"
    return None


def script_counts(text: str) -> Counter[str]:
    """Letters per script: kana, han, hangul, cyrillic, latin, other (digits and punctuation ignored)."""
    return Counter(s for s in (script_of(ch) for ch in text) if s is not None)


def identify_language(text: str) -> str | None:
    """Script-based language ID: ja (kana present), zh (Han without kana), ko, ru, or for Latin
    script one of en fr de es it nl by stop words ("latin" when undecided); "other" for other
    scripts; None when the text has no letters."""
    counts = script_counts(text)
    if not counts:
        return None
    groups = {
        "cj": counts["kana"] + counts["han"],
        "hangul": counts["hangul"],
        "cyrillic": counts["cyrillic"],
        "latin": counts["latin"],
        "other": counts["other"],
    }
    top = max(groups, key=lambda g: (groups[g], g == "cj"))
    if top == "cj":
        return "ja" if counts["kana"] else "zh"
    if top == "hangul":
        return "ko"
    if top == "cyrillic":
        return "ru"
    if top == "other":
        return "other"
    words = [w.lower() for w in _WORD.findall(text)]
    votes = Counter({lang: sum(w in STOPWORDS[lang] for w in words) for lang in LATIN_LANGS})
    for ch in text.lower():
        if ch in _LETTER_HINTS:
            votes[_LETTER_HINTS[ch]] += 0.5
    ranked = votes.most_common()
    if not ranked or ranked[0][1] == 0 or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return "latin"
    return ranked[0][0]


def stays_in_language(detected: str | None, lang: str) -> bool | None:
    """Whether an output identified as ``detected`` is in ``lang``; None when undecidable
    (no letters, or Latin script without a clear stop-word winner for a Latin-script ``lang``)."""
    if detected is None:
        return None
    if detected == "latin":
        return None if lang in LATIN_LANGS else False
    return detected == lang


def output_language_share(texts: Sequence[str], lang: str) -> dict[str, Any]:
    """Share of ``texts`` identified as ``lang``, among those whose language could be decided."""
    detected = [identify_language(t) for t in texts]
    verdicts = [stays_in_language(d, lang) for d in detected]
    decided = [v for v in verdicts if v is not None]
    return {
        "share": (sum(decided) / len(decided)) if decided else None,
        "n": len(texts),
        "n_decided": len(decided),
        "counts": dict(sorted(Counter("none" if d is None else d for d in detected).items())),
    }

"""Which language a greedy continuation is in: lingua-language-detector, or a script and stop-word heuristic.

``--langid auto`` (the default) uses lingua when it is installed (``pip install 'tnedit[langid]'``) and the
heuristic otherwise; ``--langid lingua`` insists on lingua, ``--langid heuristic`` on the heuristic. The
result's ``detector`` names the one that decided. Lingua is imported lazily, so this module stays cheap and
works without it.

Lingua is restricted to the languages at hand (the evaluation's English and targets, plus the language
asked about), so it can only answer among them. Two rules complete that:

- Fewer than two languages at hand: the lone language is told apart from the ten languages the heuristic
  knows (those of the built-in corpus); a restriction to one language would call every text that language.
- A language at hand that lingua does not know: the heuristic decides that whole call, since lingua would
  misname every output written in it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tnedit.errors import InputError

if TYPE_CHECKING:  # settings imports click and the edit spec: too heavy for a module the CLI imports early
    from tnedit.evaluate.settings import Detector

LINGUA_DISTRIBUTION = "lingua-language-detector"
HEURISTIC_LABEL = "heuristic (script and stop words)"
# Lingua answers None unless its best language beats the next by this much: garbage output stays undecided
# instead of being called the likeliest of two languages (on the built-in corpus it costs at most 1 in 360).
LINGUA_MINIMUM_DISTANCE = 0.1
LINGUA_CACHE_SIZE = 8

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
# Every language identify_language can name: what a lone language at hand is told apart from under lingua.
HEURISTIC_LANGUAGES = (*LATIN_LANGS, *SCRIPT_LANGS)

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


def lingua_installed() -> bool:
    try:
        import lingua  # noqa: F401
    except ImportError:  # also what ``sys.modules["lingua"] = None`` raises
        return False
    return True


def resolve_detector(detector: Detector) -> str:
    """The concrete detector, ``lingua`` or ``heuristic``: ``auto`` takes lingua when it is installed, and
    ``lingua`` requested without it is an :class:`InputError` (checked before any model loads)."""
    if detector == "auto":
        return "lingua" if lingua_installed() else "heuristic"
    if detector == "lingua" and not lingua_installed():
        raise InputError(f"--langid lingua: {LINGUA_DISTRIBUTION} is not installed (pip install 'tnedit[langid]')")
    if detector not in ("lingua", "heuristic"):
        raise InputError(f"--langid must be auto, lingua or heuristic, got {detector!r}")
    return detector


def detector_label(detector: str) -> str:
    """How a report names the detector that decided: the library and its version, or the heuristic."""
    if detector == "lingua":
        import importlib.metadata  # costs more than the rest of this module: only when a report asks

        return f"{LINGUA_DISTRIBUTION} {importlib.metadata.version(LINGUA_DISTRIBUTION)}"
    return HEURISTIC_LABEL


@functools.cache
def lingua_known_languages() -> frozenset[str]:
    """The ISO 639-1 codes (lower case) of every language lingua has a model for."""
    from lingua import Language

    return frozenset(language.iso_code_639_1.name.lower() for language in Language.all())


def lingua_languages(codes: Sequence[str]) -> tuple[str, ...] | None:
    """The codes lingua is restricted to, sorted (a lone language with the heuristic's ten), or None when
    lingua does not know one of them."""
    wanted = set(codes)
    if len(wanted) < 2:
        wanted |= set(HEURISTIC_LANGUAGES)
    if not wanted <= lingua_known_languages():
        return None
    return tuple(sorted(wanted))


@functools.lru_cache(maxsize=LINGUA_CACHE_SIZE)
def lingua_detector(codes: tuple[str, ...]) -> Any:
    """One built detector per restriction: building loads the language models, which is the slow part."""
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    iso_codes = [IsoCode639_1.from_str(code) for code in codes]
    return (LanguageDetectorBuilder.from_iso_codes_639_1(*iso_codes)
            .with_minimum_relative_distance(LINGUA_MINIMUM_DISTANCE).build())


def lingua_identifier(codes: Sequence[str]) -> Callable[[str], str | None] | None:
    """A function text → ISO code (None: no letters, or lingua undecided), or None when lingua can't serve."""
    restricted = lingua_languages(codes)
    if restricted is None:
        return None
    detector = lingua_detector(restricted)

    def identify(text: str) -> str | None:
        # Lingua would still pick a language for digits and punctuation; the heuristic calls those undecided.
        if not script_counts(text):
            return None
        found = detector.detect_language_of(text)
        return None if found is None else found.iso_code_639_1.name.lower()

    return identify


def output_language_share(texts: Sequence[str], lang: str, *, detector: Detector = "auto",
                          languages: Sequence[str] = ()) -> dict[str, Any]:
    """Share of ``texts`` identified as ``lang``, among those whose language could be decided.

    ``detector`` is ``auto``, ``lingua`` or ``heuristic`` (:func:`resolve_detector`); lingua is restricted to
    ``languages`` and ``lang`` (see the module's rules). ``counts`` tallies the identified languages
    (``none``: undecided) and ``detector`` names the detector that decided.
    """
    used = resolve_detector(detector)
    identify = lingua_identifier([*languages, lang]) if used == "lingua" else None
    if identify is None:
        used, identify = "heuristic", identify_language
    detected = [identify(text) for text in texts]
    verdicts = [stays_in_language(found, lang) for found in detected]
    decided = [verdict for verdict in verdicts if verdict is not None]
    return {
        "share": (sum(decided) / len(decided)) if decided else None,
        "n": len(texts),
        "n_decided": len(decided),
        "counts": dict(sorted(Counter("none" if found is None else found for found in detected).items())),
        "detector": detector_label(used),
    }

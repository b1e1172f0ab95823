"""Parallel sentences: the built-in corpus, TSV/JSONL files and (optionally) Hugging Face datasets.

Everything here is stdlib-only; the optional ``datasets`` package is imported only for ``hf:`` sources.
Every failure the user can cause is a :class:`~tnedit.errors.CorpusError` whose one-line message names
the source (file, line, language) and what was expected. QA items live in :mod:`tnedit.qa`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from tnedit.errors import CorpusError
from tnedit.formats.digest import sha256_json_lines
from tnedit.formats.text_files import numbered_lines, read_text_file

__all__ = [
    "BUILTIN_LANGUAGES",
    "BUILTIN_SOURCE",
    "Corpus",
    "ParallelCorpus",
    "builtin_corpus",
    "check_tokenizable",
    "load_corpus",
]

#: The columns of the built-in corpus (``tnedit/data/corpus.tsv``), in file order. English is the shared language.
BUILTIN_LANGUAGES: tuple[str, ...] = ("en", "ja", "ko", "zh", "fr", "de", "es", "it", "nl", "ru")
BUILTIN_SOURCE = "builtin"

_BUILTIN_TSV = Path(__file__).resolve().parent / "data" / "corpus.tsv"

_TSV_SUFFIXES = (".tsv", ".txt")
_JSONL_SUFFIXES = (".jsonl",)
_LANG_CODE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")
_SHOW_ROWS = 10  # how many offending row numbers an error message lists
_DIGEST_HEADER = b"tnedit.corpus/1\n"


class Corpus(Protocol):
    """What identify, LAPE and evaluate read of a corpus (:class:`ParallelCorpus` and the tests' in-memory one)."""

    @property
    def source(self) -> str: ...

    @property
    def languages(self) -> Sequence[str]: ...

    @property
    def sha256(self) -> str: ...

    def column(self, lang: str) -> list[str]: ...

    def pairs(self, l1: str, l2: str) -> list[tuple[str, str]]: ...


# --- the corpus -----------------------------------------------------------------------------------


def _content_sha256(languages: Sequence[str], columns: dict[str, Sequence[str]]) -> str:
    """SHA-256 over the languages and the rows, independent of where the data came from."""
    cols = [columns[lang] for lang in languages]
    rows = ([column[i] for column in cols] for i in range(len(cols[0]) if cols else 0))
    return sha256_json_lines(_DIGEST_HEADER, [list(languages), *rows])


@dataclass(frozen=True)
class ParallelCorpus:
    """Aligned sentences: row ``i`` of every column says the same thing in that column's language."""

    source: str
    languages: tuple[str, ...]
    columns: dict[str, tuple[str, ...]] = field(repr=False)
    sha256: str = ""  # computed from the content when left empty

    def __post_init__(self) -> None:
        langs = tuple(self.languages)
        if not langs:
            raise CorpusError(f"{self.source}: a parallel corpus needs at least one language column")
        if len(set(langs)) != len(langs):
            raise CorpusError(f"{self.source}: language listed twice in {', '.join(langs)}")
        missing = [lang for lang in langs if lang not in self.columns]
        if missing:
            raise CorpusError(f"{self.source}: no column for {', '.join(missing)}")
        cols = {lang: tuple(self.columns[lang]) for lang in langs}
        lengths = {len(c) for c in cols.values()}
        if len(lengths) > 1:
            detail = ", ".join(f"{lang}={len(c)}" for lang, c in cols.items())
            raise CorpusError(f"{self.source}: columns are not aligned ({detail} sentences)")
        object.__setattr__(self, "languages", langs)
        object.__setattr__(self, "columns", cols)
        if not self.sha256:
            object.__setattr__(self, "sha256", _content_sha256(langs, cols))

    def __len__(self) -> int:
        return len(self.columns[self.languages[0]])

    def _require(self, lang: str) -> None:
        if lang not in self.columns:
            raise CorpusError(
                f"{self.source}: no '{lang}' column (available: {', '.join(self.languages)})"
            )

    def column(self, lang: str) -> list[str]:
        """The sentences of one language, in row order."""
        self._require(lang)
        return list(self.columns[lang])

    def pairs(self, l1: str, l2: str) -> list[tuple[str, str]]:
        """``(l1 sentence, l2 sentence)`` for every row."""
        self._require(l1)
        self._require(l2)
        return list(zip(self.columns[l1], self.columns[l2], strict=True))

    def select(self, languages: Sequence[str]) -> ParallelCorpus:
        """Only these columns, in the order given (duplicates dropped)."""
        if isinstance(languages, str):
            languages = [languages]
        langs = tuple(dict.fromkeys(languages))
        if not langs:
            raise CorpusError(f"{self.source}: select() needs at least one language")
        for lang in langs:
            self._require(lang)
        return ParallelCorpus(self.source, langs, {lang: self.columns[lang] for lang in langs})

    def slice(self, start: int, stop: int | None = None) -> ParallelCorpus:
        """Rows ``start:stop`` (Python slice semantics)."""
        return ParallelCorpus(
            self.source, self.languages, {lang: c[start:stop] for lang, c in self.columns.items()}
        )

    def split(self, n_first: int) -> tuple[ParallelCorpus, ParallelCorpus]:
        """(the first ``n_first`` rows, the rest), e.g. identification data vs evaluation data."""
        if not isinstance(n_first, int) or n_first < 0:
            raise CorpusError(f"{self.source}: split() needs a row count >= 0, got {n_first!r}")
        if n_first > len(self):
            raise CorpusError(f"{self.source}: cannot split off {n_first} rows, the corpus has {len(self)}")
        return self.slice(0, n_first), self.slice(n_first, None)


# --- loading --------------------------------------------------------------------------------------


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in _TSV_SUFFIXES:
        return "tsv"
    if last in _JSONL_SUFFIXES:
        return "jsonl"
    return last or "(none)"


def _want(languages: Sequence[str] | None) -> tuple[str, ...]:
    if languages is None:
        return ()
    if isinstance(languages, str):
        languages = [languages]
    return tuple(dict.fromkeys(str(x).strip() for x in languages))


def _missing_column(source: str, missing: Sequence[str], available: Sequence[str]) -> CorpusError:
    what = ", ".join(f"'{m}'" for m in missing)
    return CorpusError(
        f"{source}: no {what} column{'s' if len(missing) > 1 else ''} "
        f"(available: {', '.join(available) or 'none'})"
    )


def _parse_tsv(text: str, shown: str, want: tuple[str, ...], limit: int | None) -> ParallelCorpus:
    lines = numbered_lines(text)
    first = next(lines, None)
    if first is None:
        raise CorpusError(f"{shown}: empty file; expected a header row of language codes (e.g. 'en<TAB>ja')")
    header_no, header_line = first
    header = [c.strip() for c in header_line.split("\t")]
    for cell in header:
        if not _LANG_CODE.match(cell):
            shown_cell = cell if len(cell) <= 40 else cell[:37] + "..."
            raise CorpusError(
                f"{shown}, line {header_no}: the first line must be a header of tab-separated language codes "
                f"(e.g. 'en<TAB>ja'), got {shown_cell!r}"
            )
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise CorpusError(f"{shown}, line {header_no}: language {', '.join(dup)} appears twice in the header")
    keep = want or tuple(header)
    missing = [lang for lang in keep if lang not in header]
    if missing:
        raise _missing_column(shown, missing, header)
    idx = {lang: header.index(lang) for lang in keep}
    cols: dict[str, list[str]] = {lang: [] for lang in keep}
    n = 0
    for lineno, line in lines:
        if limit is not None and n >= limit:
            break
        cells = line.split("\t")
        if len(cells) != len(header):
            raise CorpusError(
                f"{shown}, line {lineno}: expected {len(header)} tab-separated cells ({', '.join(header)}), "
                f"found {len(cells)}"
            )
        for lang, j in idx.items():
            cell = cells[j].strip()
            if not cell:
                raise CorpusError(f"{shown}, line {lineno}: empty '{lang}' cell")
            cols[lang].append(cell)
        n += 1
    if n == 0:
        raise CorpusError(f"{shown}: no data rows after the header")
    return ParallelCorpus(shown, keep, cols)


def _parse_jsonl(text: str, shown: str, want: tuple[str, ...], limit: int | None) -> ParallelCorpus:
    keep: tuple[str, ...] = want
    cols: dict[str, list[str]] = {}
    n = 0
    for lineno, line in numbered_lines(text):
        if limit is not None and n >= limit:
            break
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{shown}, line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise CorpusError(
                f"{shown}, line {lineno}: expected a JSON object like {{\"en\": \"...\", \"ja\": \"...\"}}, "
                f"got {type(obj).__name__}"
            )
        if not keep:
            keep = tuple(k for k, v in obj.items() if isinstance(v, str) and _LANG_CODE.match(k))
            if not keep:
                raise CorpusError(
                    f"{shown}, line {lineno}: no language keys with string values "
                    f"(expected e.g. {{\"en\": \"...\", \"ja\": \"...\"}})"
                )
        if not cols:
            cols = {lang: [] for lang in keep}
        for lang in keep:
            if lang not in obj:
                raise CorpusError(
                    f"{shown}, line {lineno}: missing key '{lang}' (keys: {', '.join(map(str, obj)) or 'none'})"
                )
            value = obj[lang]
            if not isinstance(value, str):
                raise CorpusError(
                    f"{shown}, line {lineno}: '{lang}' must be a string, got {type(value).__name__}"
                )
            value = value.strip()
            if not value:
                raise CorpusError(f"{shown}, line {lineno}: empty '{lang}' sentence")
            cols[lang].append(value)
        n += 1
    if n == 0:
        raise CorpusError(
            f"{shown}: no data; expected one JSON object per line like {{\"en\": \"...\", \"ja\": \"...\"}}"
        )
    return ParallelCorpus(shown, keep, cols)


def _hf_row_getter(ds: Any, source: str) -> tuple[list[str], Any]:
    """(available languages, function row -> {lang: text}) for a flat or a ``translation`` dataset."""
    names = list(getattr(ds, "column_names", None) or [])
    if "translation" in names:
        first = next(iter(ds), None)
        trans = (first or {}).get("translation") or {}
        if not isinstance(trans, dict):
            raise CorpusError(f"{source}: column 'translation' is not a {{language: text}} mapping")
        return list(trans), lambda row: row.get("translation") or {}
    first = next(iter(ds), None) or {}
    langs = [c for c in names if _LANG_CODE.match(c) and isinstance(first.get(c), str)]
    return langs, lambda row: row


def _load_hf(spec: str, want: tuple[str, ...], limit: int | None) -> ParallelCorpus:
    body = spec[3:]
    name, _, config = body.partition(":")
    name, config = name.strip(), config.strip() or None
    if not name:
        raise CorpusError(f"{spec}: expected hf:NAME or hf:NAME:CONFIG")
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"{spec}: reading Hugging Face datasets needs the optional 'datasets' package: "
            "pip install 'tnedit[hf]'"
        ) from None
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as exc:  # the library raises many types (network, missing config, ...)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorpusError(f"{spec}: cannot load the dataset ({msg})") from None
    if isinstance(ds, dict) or isinstance(getattr(ds, "column_names", None), dict):  # a DatasetDict: pick a split
        splits = list(ds.keys())
        if not splits:
            raise CorpusError(f"{spec}: the dataset has no splits")
        ds = ds["train"] if "train" in splits else ds[splits[0]]
    available, get = _hf_row_getter(ds, spec)
    # an 'id' column is almost always an identifier, not Indonesian: used only when asked for by name
    keep = want or tuple(lang for lang in available if lang != "id")
    missing = [lang for lang in keep if lang not in available]
    if missing:
        raise _missing_column(spec, missing, [lang for lang in available if lang != "id" or "id" in want])
    cols: dict[str, list[str]] = {lang: [] for lang in keep}
    n = 0
    for i, row in enumerate(ds):
        if limit is not None and n >= limit:
            break
        values = get(row)
        for lang in keep:
            value = values.get(lang)
            if not isinstance(value, str) or not value.strip():
                raise CorpusError(f"{spec}: row {i}: empty or missing '{lang}' text")
            cols[lang].append(value.strip())
        n += 1
    if n == 0:
        raise CorpusError(f"{spec}: the dataset has no rows")
    return ParallelCorpus(spec, keep, cols)


@lru_cache(maxsize=1)
def _builtin() -> ParallelCorpus:
    text = read_text_file(_BUILTIN_TSV, f"{BUILTIN_SOURCE} ({_BUILTIN_TSV})", CorpusError)
    corpus = _parse_tsv(text, BUILTIN_SOURCE, (), None)
    if corpus.languages != BUILTIN_LANGUAGES:  # pragma: no cover - guards the shipped file
        raise CorpusError(f"{BUILTIN_SOURCE}: header {corpus.languages} differs from {BUILTIN_LANGUAGES}")
    return corpus


def builtin_corpus() -> ParallelCorpus:
    """The parallel corpus shipped with tnedit (short everyday sentences in :data:`BUILTIN_LANGUAGES`)."""
    return _builtin()


def _load_builtin(want: tuple[str, ...], limit: int | None) -> ParallelCorpus:
    corpus = builtin_corpus()
    if want:
        missing = [lang for lang in want if lang not in corpus.languages]
        if missing:
            raise _missing_column(BUILTIN_SOURCE, missing, corpus.languages)
        corpus = corpus.select(want)
    if limit is not None and limit < len(corpus):
        corpus = corpus.slice(0, limit)
    return corpus


def _load_file(shown: str, want: tuple[str, ...], limit: int | None) -> ParallelCorpus:
    path = Path(shown).expanduser()
    kind = _kind(path)
    if kind not in ("tsv", "jsonl"):
        if not path.exists():
            raise CorpusError(f"{shown}: no such file")
        raise CorpusError(
            f"{shown}: unknown file type '{kind}'; expected .tsv or .txt (tab-separated, header row of "
            "language codes), .jsonl (one {\"en\": ..., \"ja\": ...} object per line) or hf:NAME[:CONFIG]"
        )
    text = read_text_file(path, shown, CorpusError)
    return (_parse_tsv if kind == "tsv" else _parse_jsonl)(text, shown, want, limit)


def load_corpus(
    data: str | os.PathLike[str] | None,
    languages: Sequence[str] | None = (),
    *,
    limit: int | None = None,
    min_rows: int = 10,
) -> ParallelCorpus:
    """Load parallel sentences.

    ``data``: ``None`` (or ``"builtin"``) for the built-in corpus; a ``.tsv``/``.txt`` file whose first line
    is a header of tab-separated language codes; a ``.jsonl`` file of ``{"en": ..., "ja": ...}`` objects
    (either optionally ``.gz``-compressed); or ``hf:NAME[:CONFIG]`` (needs ``pip install 'tnedit[hf]'``).
    ``languages``: required columns, kept in this order (empty/None = all columns, in file order).
    ``limit``: keep only the first N rows. At least ``min_rows`` rows (or ``limit``, if smaller) must remain.
    """
    want = _want(languages)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        shown = BUILTIN_SOURCE if data is None else os.fspath(data)
        raise CorpusError(f"{shown}: limit must be a positive integer, got {limit!r}")
    if data is None or (isinstance(data, str) and data.strip() == BUILTIN_SOURCE and not Path(data).exists()):
        corpus = _load_builtin(want, limit)
    elif isinstance(data, str) and data.startswith("hf:"):
        corpus = _load_hf(data, want, limit)
    else:
        corpus = _load_file(os.fspath(data), want, limit)
    need = min(min_rows, limit) if limit is not None else min_rows
    if len(corpus) < need:
        raise CorpusError(
            f"{corpus.source}: only {len(corpus)} usable row(s) of {', '.join(corpus.languages)}; "
            f"need at least {need}"
        )
    return corpus


def check_tokenizable(corpus: Corpus, tokenizer: Any, languages: Iterable[str] | None = None) -> None:
    """Raise :class:`CorpusError` if any sentence of ``languages`` tokenizes to zero tokens."""
    langs = list(languages) if languages else list(corpus.languages)
    problems = []
    for lang in langs:
        bad = []
        for i, text in enumerate(corpus.column(lang), 1):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 0:
                bad.append(i)
        if bad:
            rows = ", ".join(map(str, bad[:_SHOW_ROWS])) + (", ..." if len(bad) > _SHOW_ROWS else "")
            problems.append(f"{len(bad)} '{lang}' sentence(s) at row(s) {rows}")
    if problems:
        raise CorpusError(f"{corpus.source}: sentences that tokenize to zero tokens: {'; '.join(problems)}")

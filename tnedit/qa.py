"""Short-answer QA items: the built-in set (``tnedit/data/qa.jsonl``) and JSONL files in tnedit's or MKQA's format.

Stdlib-only and torch-free. Every failure the user can cause is a :class:`~tnedit.errors.CorpusError` whose
one-line message names the file, the line and what was expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnedit.errors import CorpusError
from tnedit.formats.text_files import numbered_lines, read_text_file

__all__ = ["BUILTIN_QA", "QAItem", "load_qa"]

#: The QA set shipped with tnedit, used when no file is given.
BUILTIN_QA = Path(__file__).resolve().parent / "data" / "qa.jsonl"
_BUILTIN_WHERE = "built-in QA set"


@dataclass(frozen=True)
class QAItem:
    """One question in one language, with every acceptable short answer."""

    id: str
    question: str
    answers: tuple[str, ...]


# --- one line ---------------------------------------------------------------------------------------


def _mkqa_key(language: str, available: Iterable[str]) -> str | None:
    keys = list(available)
    for key in (language, language.lower(), language.replace("-", "_").lower()):
        if key in keys:
            return key
    if language.lower() == "zh":  # MKQA spells Simplified Chinese zh_cn
        for key in ("zh_cn", "zh-cn", "zh_CN"):
            if key in keys:
                return key
    return None


def _clean_answers(values: Iterable[Any]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            out[value.strip()] = None
    return tuple(out)


def _mkqa_entry(obj: dict[str, Any], language: str, where: str, lineno: int) -> tuple[Any, list[Any], Any]:
    """(question, answer texts, id) of one MKQA line."""
    queries = obj.get("queries")
    answers = obj.get("answers")
    if not isinstance(queries, dict) or not isinstance(answers, dict):
        raise CorpusError(f"{where}, line {lineno}: MKQA 'queries' and 'answers' must be objects keyed by language")
    key = _mkqa_key(language, queries)
    if key is None:
        raise CorpusError(f"{where}, line {lineno}: no '{language}' query (available: {', '.join(queries)})")
    raw = answers.get(key) or answers.get(_mkqa_key(language, answers) or "", [])
    texts: list[Any] = []
    for answer in raw if isinstance(raw, list) else [raw]:
        if isinstance(answer, dict):
            texts.append(answer.get("text"))
            texts.extend(answer.get("aliases") or [])
        else:
            texts.append(answer)
    return queries[key], texts, obj.get("example_id", obj.get("id", f"line{lineno}"))


def _tnedit_entry(obj: dict[str, Any], language: str, where: str, lineno: int) -> tuple[Any, list[Any], Any]:
    """(question, answer texts, id) of one line in tnedit's format."""
    entry = obj.get(language)
    if entry is None:
        languages = [k for k, v in obj.items() if isinstance(v, dict)]
        if not languages:
            raise CorpusError(
                f"{where}, line {lineno}: expected {{\"id\": ..., \"{language}\": {{\"question\": ..., "
                "\"answers\": [...]}}}} or MKQA's {\"queries\": ..., \"answers\": ...}"
            )
        raise CorpusError(f"{where}, line {lineno}: no '{language}' entry (available: {', '.join(languages)})")
    if not isinstance(entry, dict) or "question" not in entry:
        raise CorpusError(f"{where}, line {lineno}: '{language}' must be {{\"question\": ..., \"answers\": [...]}}")
    raw = entry.get("answers", [])
    return entry.get("question"), raw if isinstance(raw, list) else [raw], obj.get("id", f"line{lineno}")


def _qa_item(obj: dict[str, Any], language: str, where: str, lineno: int) -> QAItem | None:
    read = _mkqa_entry if "queries" in obj else _tnedit_entry
    question, texts, ident = read(obj, language, where, lineno)
    if not isinstance(question, str) or not question.strip():
        raise CorpusError(f"{where}, line {lineno}: empty '{language}' question")
    clean = _clean_answers(texts)
    if not clean:
        return None  # unanswerable (MKQA has many); skipped
    return QAItem(str(ident), question.strip(), clean)


def load_qa(path: str | os.PathLike[str] | None, language: str) -> list[QAItem]:
    """QA items in ``language``: the built-in set (``path=None``) or a JSONL file.

    A line is either tnedit's format ``{"id": ..., "en": {"question": ..., "answers": [...]}, ...}`` or
    MKQA's ``{"example_id": ..., "queries": {lang: ...}, "answers": {lang: [{"text": ..., "aliases": [...]}]}}``.
    Items without any answer text are skipped.
    """
    if path is None:
        file, where = BUILTIN_QA, _BUILTIN_WHERE
    else:
        where = os.fspath(path)
        file = Path(where).expanduser()
    items: list[QAItem] = []
    for lineno, line in numbered_lines(read_text_file(file, where, CorpusError)):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}, line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{where}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
        item = _qa_item(obj, language, where, lineno)
        if item is not None:
            items.append(item)
    if not items:
        raise CorpusError(f"{where}: no QA items with answers for '{language}'")
    return items

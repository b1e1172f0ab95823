"""The ``tnedit.report/1`` file (report.json of ``tnedit evaluate``) as typed dataclasses. Torch-free.

The dataclasses are the schema: each field without a default is a key the report must have, of the
type its annotation names; other keys are kept in ``extra`` as written. :func:`report_errors` lists
every violation (the messages name the key path, e.g. ``conditions.edited.lm.en.n_tokens``),
:func:`check_report` raises them as one :class:`ReportError`, and :meth:`Report.from_dict` reads a
checked report into the dataclasses. Reports written before these classes existed load unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tnedit.errors import ReportError

REPORT_FORMAT = "tnedit.report/1"
REPORT_NAME = "report.json"
REPORT_MARKDOWN_NAME = "report.md"

Number = int | float


@dataclass
class ReportSettings:
    """The settings block: the keys renderers rely on (the rest of the evaluation's settings in ``extra``)."""

    languages: list[str]
    positions: str
    op: str
    seed: int
    n_pairs: int
    kl_top_k: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportData:
    """Which rows of which parallel data were evaluated, and the QA set (None without QA)."""

    source: str
    sha256: str
    rows: list[int]
    n_pairs: int
    qa: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Representation:
    """Per-layer en–L2 similarity of last-token states of one condition and language."""

    cos_parallel: list[Number]
    cos_nonparallel: list[Number]
    mutual_knn: list[Number]
    centroid_cos: list[Number]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LanguageModelStats:
    """Language-model metrics of one condition and language (``kl``/``top1`` None for the original)."""

    perplexity: Number
    nll_sum: Number
    n_tokens: int
    n_positions: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConditionReport:
    """One condition (original, edited or control): ``source`` is original, hook or baked."""

    name: str
    source: str
    n_neurons: int
    representation: dict[str, Representation]
    centroids: dict[str, Any]
    pca: dict[str, Any]
    lm: dict[str, LanguageModelStats]
    output_language: dict[str, Any]
    generations: dict[str, Any]
    qa: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


HEADLINE_KEYS = ("condition", "lang", "n_neurons", "mid_cos", "mid_cos_delta", "mid_knn", "ppl_en", "ppl_l2",
                 "kl_en", "kl_l2", "top1_en", "top1_l2", "qa_f1", "qa_em", "lang_share")


@dataclass
class Report:
    """A whole ``tnedit.report/1``. Headline rows are dicts with at least :data:`HEADLINE_KEYS`.

    Optional blocks live in ``extra`` so that a report written without them reads back unchanged:
    ``selectivity`` (0.3: per edited condition, the target's perplexity ratio against the worst kept
    language's, QA F1 and stays before → after).
    """

    format: str
    created: str
    versions: dict[str, Any]
    settings: ReportSettings
    models: dict[str, Any]
    edit: dict[str, Any] | None
    control: dict[str, Any] | None
    data: ReportData
    layers: list[int]
    mid_layers: list[int]
    conditions: dict[str, ConditionReport]
    headline: list[dict[str, Any]]
    runtime: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "report") -> Report:
        check_report(obj, where)
        return _build(cls, obj)

    def to_dict(self) -> dict[str, Any]:
        return _unbuild(self)


def load_report(path: str | Path) -> Report:
    """A report.json file, checked; ReportError names the file and the first problems."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read the report ({type(exc).__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return Report.from_dict(obj, str(path))


def check_report(obj: Any, where: str = "report") -> None:
    """Raise :class:`ReportError` listing the first five violations, if any."""
    errors = report_errors(obj)
    if errors:
        raise ReportError(f"{where} does not validate: " + "; ".join(errors[:5]))


# --- the schema check, driven by the dataclasses -------------------------------------------------


@functools.cache
def _required(cls: type) -> tuple[tuple[str, Any], ...]:
    """(key, runtime type or tuple of types) of each field of ``cls`` without a default."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _runtime_kind(hints[f.name])) for f in dataclasses.fields(cls)
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _runtime_kind(annotation: Any) -> Any:
    """What ``isinstance`` checks for an annotation: ``dict[str, X] | None`` → ``(dict, NoneType)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(_runtime_kind(option) for option in typing.get_args(annotation))
    if dataclasses.is_dataclass(annotation):
        return dict
    return typing.get_origin(annotation) or annotation


def _check_keys(obj: dict[str, Any], cls: type, where: str, errors: list[str]) -> None:
    for key, kind in _required(cls):
        if key not in obj:
            errors.append(f"{where}: missing key '{key}'")
        elif not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            errors.append(f"{where}.{key}: expected {kind}, got {type(obj[key]).__name__}")


def report_errors(report: Any) -> list[str]:
    """Schema errors of a ``tnedit.report/1`` dict (required keys and types); [] when valid."""
    errors: list[str] = []
    if not isinstance(report, dict):
        return ["report: expected a JSON object"]
    _check_keys(report, Report, "report", errors)
    if errors:
        return errors
    if report["format"] != REPORT_FORMAT:
        errors.append(f"report.format: expected '{REPORT_FORMAT}', got {report['format']!r}")
    _check_keys(report["settings"], ReportSettings, "settings", errors)
    _check_keys(report["data"], ReportData, "data", errors)
    for block in ("models", "conditions"):
        if "original" not in report[block]:
            errors.append(f"{block}: missing key 'original'")
    languages = report["settings"].get("languages", [])
    for name, condition in report["conditions"].items():
        _condition_errors(condition, f"conditions.{name}", languages, len(report["layers"]), errors)
    for i, row in enumerate(report["headline"]):
        missing = [key for key in HEADLINE_KEYS if key not in row]
        if missing:
            errors.append(f"headline[{i}]: missing keys {missing}")
    if not isinstance(report["runtime"].get("total_s"), Number):
        errors.append("runtime.total_s: expected a number")
    return errors


def _condition_errors(condition: Any, where: str, languages: list[str], n_layers: int, errors: list[str]) -> None:
    if not isinstance(condition, dict):
        errors.append(f"{where}: expected an object")
        return
    _check_keys(condition, ConditionReport, where, errors)
    representation = condition.get("representation")
    representation = representation if isinstance(representation, dict) else {}
    for lang in languages:
        per_layer = representation.get(lang)
        if not isinstance(per_layer, dict):
            errors.append(f"{where}.representation: missing language '{lang}'")
            continue
        for key, _kind in _required(Representation):
            values = per_layer.get(key)
            if not isinstance(values, list) or len(values) != n_layers or not all(
                isinstance(v, Number) for v in values
            ):
                errors.append(f"{where}.representation.{lang}.{key}: expected {n_layers} numbers")
    lm = condition.get("lm")
    for lang, stats in (lm if isinstance(lm, dict) else {}).items():
        if isinstance(stats, dict):
            _check_keys(stats, LanguageModelStats, f"{where}.lm.{lang}", errors)


# --- dicts to dataclasses and back ---------------------------------------------------------------


def _build(cls: type, obj: dict[str, Any]) -> Any:
    """``cls`` from a checked dict: nested dataclasses (also as dict values) built, other keys in ``extra``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    kwargs: dict[str, Any] = {}
    for name in names & set(obj):
        kwargs[name] = _build_value(hints[name], obj[name])
    if "extra" in {f.name for f in dataclasses.fields(cls)}:
        kwargs["extra"] = {key: value for key, value in obj.items() if key not in names}
    return cls(**kwargs)


def _build_value(annotation: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        # a block the check does not cover (a language outside settings.languages) may lack keys: kept as written
        complete = all(key in value for key, _kind in _required(annotation))
        return _build(annotation, value) if complete else value
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return {key: _build_value(args[1], item) for key, item in value.items()}
    return value


def _unbuild(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _unbuild(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "extra"}
        return {**out, **getattr(value, "extra", {})}
    if isinstance(value, dict):
        return {key: _unbuild(item) for key, item in value.items()}
    return value

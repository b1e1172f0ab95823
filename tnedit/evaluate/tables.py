"""The report's tables: one table structure, two renderers (console, Markdown), and the tables an
evaluation report shows. Everything reads the JSON-able report dict (``tnedit.report/1``), so a
report.json on disk can be re-rendered without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CONDITION_ORDER = ("original", "edited", "control")

# --- one table structure ------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str | Callable[[Any], str] = "{:.3f}"
    align: str = "right"

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if callable(self.fmt):
            return self.fmt(value)
        if isinstance(value, str):
            return value
        return self.fmt.format(value)


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[list[str]]:
        return [[c.format(row.get(c.key)) for c in self.columns] for row in self.rows]


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _ppl(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:.3g}"


def _kl(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def _text(value: Any) -> str:
    return str(value)


def render_markdown(tables: Sequence[Table]) -> str:
    out: list[str] = []
    for table in tables:
        out.append(f"### {table.title}\n")
        out.append("| " + " | ".join(c.header for c in table.columns) + " |")
        out.append("|" + "|".join("---:" if c.align == "right" else ":---" for c in table.columns) + "|")
        for cells in table.cells():
            out.append("| " + " | ".join(_md_escape(x) for x in cells) + " |")
        if table.note:
            out.append(f"\n{table.note}")
        out.append("")
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def render_console(tables: Sequence[Table], max_width: int = 40) -> str:
    out: list[str] = []
    for table in tables:
        cells = [[_clip(x, max_width) for x in row] for row in table.cells()]
        headers = [c.header for c in table.columns]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

        out.append(table.title)
        out.append(_console_line(headers, widths, table.columns))
        out.append("  ".join("-" * w for w in widths))
        out.extend(_console_line(r, widths, table.columns) for r in cells)
        if table.note:
            out.append(table.note)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _console_line(items: Sequence[str], widths: Sequence[int], columns: Sequence[Column]) -> str:
    parts = [
        it.rjust(w) if c.align == "right" else it.ljust(w) for it, w, c in zip(items, widths, columns, strict=True)
    ]
    return "  ".join(parts).rstrip()


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= width else text[: width - 1] + "…"


# --- the scorer's tables --------------------------------------------------------------------------


def conditions(report: dict[str, Any]) -> list[str]:
    present = report["conditions"]
    return [c for c in CONDITION_ORDER if c in present] + [c for c in present if c not in CONDITION_ORDER]


def _detector(report: dict[str, Any]) -> str:
    """The output-language detector a report's shares come from (reports before 0.3: the heuristic)."""
    for condition in report["conditions"].values():
        for share in condition.get("output_language", {}).values():
            if share.get("detector") and not share["detector"].startswith("heuristic"):
                return share["detector"]
    return "script/stop words"


def headline_table(report: dict[str, Any]) -> Table:
    langs = report["settings"]["languages"]
    en = report["settings"].get("english", "en")
    several = len(langs) > 1
    columns = [Column("condition", "condition", _text, "left")]
    if several:
        columns.append(Column("lang", "L2", _text, "left"))
    columns += [
        Column("n_neurons", "neurons", "{:d}"),
        Column("mid_cos", f"mid cos {en}–L2" if several else f"mid cos {en}–{langs[0]}"),
        Column("mid_cos_delta", "Δ vs orig", _signed),
        Column("mid_floor", "floor"),
        Column("mid_margin", "margin", _signed),
        Column("mid_knn", "mKNN"),
        Column("ppl_en", f"ppl {en}", _ppl),
        Column("ppl_l2", "ppl L2" if several else f"ppl {langs[0]}", _ppl),
        Column("kl_en", f"KL {en}", _kl),
        Column("kl_l2", "KL L2" if several else f"KL {langs[0]}", _kl),
        Column("top1_en", f"top-1 {en}", _pct),
        Column("top1_l2", "top-1 L2" if several else f"top-1 {langs[0]}", _pct),
        Column("qa_f1", "QA F1"),
        Column("qa_em", "QA EM"),
        Column("lang_share", "stays L2" if several else f"stays {langs[0]}", _pct),
    ]
    mids = report["mid_layers"]
    note = (
        f"mid = mean over layers {mids[0]}–{mids[-1]} (middle third) of last-token raw layer outputs; "
        "floor = the same cosine on shuffled non-parallel pairs; margin = parallel minus floor, the alignment "
        "specific to translations (a drop shared by all sentences leaves it unchanged); "
        f"mKNN = mutual {knn_k(report)}-NN alignment; "
        f"KL(original ‖ condition) and top-1 agreement over all real tokens ({_kl_method_note(report)}); "
        f"stays = share of greedy continuations identified (by {_detector(report)}) as the prompt's language."
    )
    return Table("Headline", columns, report["headline"], note=note)


def knn_k(report: dict[str, Any]) -> int:
    return int(report["conditions"]["original"].get("knn_k", 10))


def _kl_method_note(report: dict[str, Any]) -> str:
    methods = {c.get("kl_method") for c in report["conditions"].values() if c.get("kl_method")}
    if methods <= {"exact"}:
        return "exact"
    k = report["settings"].get("kl_top_k")
    return f"baked edits: original's top-{k} tokens + one rest bucket, a lower bound on KL"


def expert_counts_text(counts: dict[str, int] | None) -> str:
    """``e0:3 e2:1 shared:2``: a layer's edited neurons per expert (``–`` for none)."""
    return " ".join(f"{name}:{n}" for name, n in (counts or {}).items()) or "–"


def layer_tables(report: dict[str, Any]) -> list[Table]:
    conds = conditions(report)
    en = report["settings"].get("english", "en")
    per_expert = (report.get("edit") or {}).get("per_expert")
    first = [Column("layer", "layer", "{:d}")] + ([Column("experts", "edited per expert")] if per_expert else [])
    tables = []
    for lang in report["settings"]["languages"]:
        rows = []
        for layer in report["layers"]:
            row: dict[str, Any] = {"layer": layer}
            if per_expert:
                row["experts"] = expert_counts_text(per_expert.get(str(layer)))
            for c in conds:
                rep = report["conditions"][c]["representation"][lang]
                row[f"{c}_par"] = rep["cos_parallel"][layer]
                row[f"{c}_floor"] = rep["cos_nonparallel"][layer]
                row[f"{c}_knn"] = rep["mutual_knn"][layer]
                row[f"{c}_cent"] = rep["centroid_cos"][layer]
            rows.append(row)
        cos_cols = list(first)
        for c in conds:
            cos_cols += [Column(f"{c}_par", f"{c} parallel"), Column(f"{c}_floor", f"{c} floor")]
        tables.append(Table(f"{en}–{lang} last-token cosine per layer", cos_cols, rows))
        knn_cols = list(first)
        for c in conds:
            knn_cols += [Column(f"{c}_knn", f"{c} mKNN"), Column(f"{c}_cent", f"{c} centroid cos")]
        tables.append(Table(f"{en}–{lang} mutual-kNN and centroid cosine per layer", knn_cols, rows))
    return tables


def lm_table(report: dict[str, Any]) -> Table:
    rows = []
    for c in conditions(report):
        for lang, m in report["conditions"][c]["lm"].items():
            rows.append({"condition": c, "lang": lang, **m})
    return Table(
        "Language modelling per language",
        [
            Column("condition", "condition", _text, "left"),
            Column("lang", "lang", _text, "left"),
            Column("perplexity", "perplexity", _ppl),
            Column("n_tokens", "targets", "{:d}"),
            Column("kl", "KL", _kl),
            Column("top1", "top-1 agreement", _pct),
            Column("n_positions", "positions", "{:d}"),
        ],
        rows,
    )


def qa_table(report: dict[str, Any]) -> Table | None:
    rows = []
    for c in conditions(report):
        for lang, q in report["conditions"][c].get("qa", {}).items():
            rows.append({"condition": c, "lang": lang, "f1": q["f1"], "em": q["em"], "n": q["n"]})
    if not rows:
        return None
    return Table(
        "QA (greedy, few-shot; token F1 and exact match)",
        [
            Column("condition", "condition", _text, "left"),
            Column("lang", "lang", _text, "left"),
            Column("f1", "F1"),
            Column("em", "EM"),
            Column("n", "questions", "{:d}"),
        ],
        rows,
    )


def language_table(report: dict[str, Any]) -> Table:
    rows = []
    for c in conditions(report):
        for lang, o in report["conditions"][c]["output_language"].items():
            counts = ", ".join(f"{k} {v}" for k, v in o["counts"].items())
            rows.append({"condition": c, "lang": lang, "share": o["share"], "decided": f"{o['n_decided']}/{o['n']}",
                         "counts": counts})
    return Table(
        "Output language of greedy continuations",
        [
            Column("condition", "condition", _text, "left"),
            Column("lang", "prompt lang", _text, "left"),
            Column("share", "stays", _pct),
            Column("decided", "decided", _text),
            Column("counts", "identified as", _text, "left"),
        ],
        rows,
    )


def generation_table(report: dict[str, Any]) -> Table:
    conds = conditions(report)
    rows = []
    first = report["conditions"][conds[0]]["generations"]
    for lang, samples in first.items():
        for i, sample in enumerate(samples):
            row = {"lang": lang, "prompt": sample["prompt"]}
            for c in conds:
                row[c] = report["conditions"][c]["generations"][lang][i]["output"]
            rows.append(row)
    cols = [Column("lang", "lang", _text, "left"), Column("prompt", "prompt", _text, "left")]
    cols += [Column(c, c, _text, "left") for c in conds]
    return Table("Greedy continuations, side by side", cols, rows)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _with_stderr(metrics: dict[str, Any], metric: str) -> str | None:
    value = metrics.get(metric)
    if value is None:
        return None
    stderr = metrics.get(f"{metric}_stderr")
    return _number(value) if stderr is None else f"{_number(value)} ± {_number(stderr)}"


def harness_table(report: dict[str, Any]) -> Table | None:
    """lm-evaluation-harness: one row per task and metric, each condition with its difference to the original."""
    results = report.get("lm_eval")
    if not results:
        return None
    conds = [c for c in conditions(report) if c in results]
    rows = []
    for task, metrics in results["original"].items():
        for metric in (m for m in metrics if not m.endswith("_stderr")):
            row: dict[str, Any] = {"task": task, "metric": metric}
            for c in conds:
                row[c] = _with_stderr(results[c].get(task, {}), metric)
                value, base = results[c].get(task, {}).get(metric), metrics[metric]
                if c != "original" and value is not None and base is not None:
                    row[f"{c}_delta"] = value - base
            rows.append(row)
    columns = [Column("task", "task", _text, "left"), Column("metric", "metric", _text, "left")]
    for c in conds:
        columns.append(Column(c, c, _text))
        if c != "original":
            columns.append(Column(f"{c}_delta", f"Δ {c}", lambda v: f"{v:+.4g}"))
    setup = report.get("lm_eval_setup") or {}
    versions = ", ".join(f"{task} {facts.get('version')}" for task, facts in setup.get("tasks", {}).items())
    note = (f"lm-evaluation-harness {setup.get('version')}, edit positions `{setup.get('positions')}`; "
            f"task versions: {versions}")
    return Table("lm-evaluation-harness", columns, rows, note=note)


def all_tables(report: dict[str, Any]) -> list[Table]:
    tables = [headline_table(report), lm_table(report)]
    qa = qa_table(report)
    if qa is not None:
        tables.append(qa)
    tables += [language_table(report), *layer_tables(report), generation_table(report)]
    return tables


# --- selectivity ----------------------------------------------------------------------------------


def _ratio(value: float) -> str:
    return f"×{value:.3g}" if value < 1e4 else f"×{value:.2e}"


def _before_after_text(block: dict[str, dict[str, Any]], fmt: Callable[[Any], str]) -> str:
    shown = [f"{lang} {fmt(v['original']) if v['original'] is not None else '–'}→"
             f"{fmt(v['edited']) if v['edited'] is not None else '–'}"
             for lang, v in block.items() if v["original"] is not None or v["edited"] is not None]
    return ", ".join(shown) or "–"


def selectivity_lines(report: dict[str, Any]) -> list[str]:
    """One line per edited condition: the target's perplexity ratio against the worst kept language's,
    QA F1 and the share of continuations that stay in the prompt's language, before → after."""
    lines = []
    for row in report.get("selectivity") or []:
        worst = f"{_ratio(row['worst_kept_ppl_ratio'])} for the worst kept language ({row['worst_kept']})"
        if row["target"]:
            head = (f"{row['target']} perplexity {_ratio(row['target_ppl_ratio'])} against {worst}: "
                    f"{_ratio(row['selectivity'])} selective")
        else:
            head = f"the edit's language was not evaluated; {worst}"
        qa = _before_after_text(row["qa_f1"], "{:.2f}".format)
        lines.append(f"selectivity ({row['condition']}): {head}; QA F1 {qa}; "
                     f"stays {_before_after_text(row['stays'], _pct)}")
    return lines

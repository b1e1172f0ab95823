"""Rendering an evaluation result: one table structure, two renderers (console, Markdown), plots,
and the ``tnedit.report/1`` schema check.

Everything here reads the JSON-able report dict that :func:`tnedit.evaluate.evaluate` builds, so a
``report.json`` on disk can be re-rendered without a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_FORMAT = "tnedit.report/1"
CONDITION_ORDER = ("original", "edited", "control")
CONDITION_COLORS = {"original": "#1f77b4", "edited": "#d62728", "control": "#7f7f7f"}

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
        f"floor = the same cosine on shuffled non-parallel pairs; mKNN = mutual {_knn_k(report)}-NN alignment; "
        f"KL(original ‖ condition) and top-1 agreement over all real tokens ({_kl_method_note(report)}); "
        "stays = share of greedy continuations identified (by script/stop words) as the prompt's language."
    )
    return Table("Headline", columns, report["headline"], note=note)


def _knn_k(report: dict[str, Any]) -> int:
    return int(report["conditions"]["original"].get("knn_k", 10))


def _kl_method_note(report: dict[str, Any]) -> str:
    methods = {c.get("kl_method") for c in report["conditions"].values() if c.get("kl_method")}
    if methods <= {"exact"}:
        return "exact"
    k = report["settings"].get("kl_top_k")
    return f"baked edits: original's top-{k} tokens + one rest bucket, a lower bound on KL"


def layer_tables(report: dict[str, Any]) -> list[Table]:
    conds = conditions(report)
    en = report["settings"].get("english", "en")
    tables = []
    for lang in report["settings"]["languages"]:
        rows = []
        for layer in report["layers"]:
            row: dict[str, Any] = {"layer": layer}
            for c in conds:
                rep = report["conditions"][c]["representation"][lang]
                row[f"{c}_par"] = rep["cos_parallel"][layer]
                row[f"{c}_floor"] = rep["cos_nonparallel"][layer]
                row[f"{c}_knn"] = rep["mutual_knn"][layer]
                row[f"{c}_cent"] = rep["centroid_cos"][layer]
            rows.append(row)
        cos_cols = [Column("layer", "layer", "{:d}")]
        for c in conds:
            cos_cols += [Column(f"{c}_par", f"{c} parallel"), Column(f"{c}_floor", f"{c} floor")]
        tables.append(Table(f"{en}–{lang} last-token cosine per layer", cos_cols, rows))
        knn_cols = [Column("layer", "layer", "{:d}")]
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


def all_tables(report: dict[str, Any]) -> list[Table]:
    tables = [headline_table(report), lm_table(report)]
    qa = qa_table(report)
    if qa is not None:
        tables.append(qa)
    tables += [language_table(report), *layer_tables(report), generation_table(report)]
    return tables


def render_report_markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    s = report["settings"]
    edit = report["edit"]
    lines = [
        "# tnedit evaluation",
        "",
        f"- original: `{report['models']['original']['name_or_path']}`",
    ]
    if report["models"].get("edited"):
        lines.append(f"- edited: `{report['models']['edited']['name_or_path']}` (baked checkpoint)")
    if edit:
        what = "zero" if edit["op"] == "zero" else f"scale ×{edit['factor']:g}"
        lines.append(
            f"- edit: {what} on {edit['n_neurons']} neurons "
            f"({edit['source']}, positions `{edit['positions']}`), neuron set sha256 `{edit.get('neuron_set_sha256')}`"
        )
    if report.get("control"):
        ctl = report["control"]
        lines.append(
            f"- control: {ctl['n_neurons']} random neurons from layers {ctl['layers_text']} (seed {ctl['seed']}, "
            "excluding the edited set)"
        )
    data = report["data"]
    lines += [
        f"- data: {data['source']} rows {data['rows'][0]}–{data['rows'][1] - 1} ({data['n_pairs']} pairs, "
        f"languages {', '.join([s.get('english', 'en'), *s['languages']])}), sha256 `{data['sha256']}`",
        f"- runtime: {report['runtime']['total_s']:.1f} s on {report['runtime']['device']}",
        "",
        "## Summary",
        "",
        render_markdown([headline_table(report)]),
    ]
    if any("last" == (report["conditions"][c].get("positions")) for c in report["conditions"]):
        lines.append(
            "_A hook on the last token cannot change in-sentence perplexity; perplexity and KL are meaningful "
            "for all-position edits (as baked checkpoints are)._\n"
        )
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["## Details", "", render_markdown(all_tables(report)[1:])]
    return "\n".join(lines).rstrip() + "\n"


# --- plots --------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_dir: Path, name: str) -> str:
    """Write one figure and free it: figures of earlier conditions must not pile up in memory."""
    import matplotlib.pyplot as plt

    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def _gap(rep: dict[str, list[float]]) -> list[float]:
    return [a - b for a, b in zip(rep["cos_parallel"], rep["cos_nonparallel"], strict=True)]


def plot_curves(report: dict[str, Any], out_dir: Path) -> list[str]:
    """similarity.png (cosine: parallel solid, non-parallel dashed; below, their gap) and mutual_knn.png."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    langs = report["settings"]["languages"]
    en = report["settings"].get("english", "en")
    layers = report["layers"]
    written = []
    specs = [
        ("similarity.png", [
            ("last-token cosine", [("cos_parallel", "-", "parallel"), ("cos_nonparallel", "--", "non-parallel")]),
            ("parallel − non-parallel", [("gap", "-", "")]),
        ]),
        ("mutual_knn.png", [(f"mutual {_knn_k(report)}-NN alignment", [("mutual_knn", "-", "")])]),
    ]
    for name, panels in specs:
        fig, axes = plt.subplots(
            len(panels), len(langs), figsize=(6.4 * len(langs), 3.6 * len(panels)), squeeze=False, sharex=True
        )
        for col, lang in enumerate(langs):
            for row, (ylabel, series) in enumerate(panels):
                ax = axes[row][col]
                for c in conditions(report):
                    rep = dict(report["conditions"][c]["representation"][lang])
                    rep["gap"] = _gap(rep)
                    # the original underneath, wider, so an unchanged control does not hide it
                    width, alpha = (3.2, 0.55) if c == "original" else (1.4, 0.95)
                    for key, style, what in series:
                        ax.plot(layers, rep[key], style, color=CONDITION_COLORS.get(c), marker="o", ms=3, lw=width,
                                alpha=alpha, label=f"{c} {what}".strip())
                if row == 0:
                    ax.set_title(f"{en}–{lang}")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            axes[-1][col].set_xlabel("layer")
        fig.tight_layout()
        written.append(_save(fig, out_dir, name))
    return written


def plot_pca(report: dict[str, Any], out_dir: Path) -> list[str]:
    plt = _pyplot()
    written = []
    for c in conditions(report):
        pca = report["conditions"][c]["pca"]
        n_layers = len(pca["layers"])
        fig, axes = plt.subplots(1, n_layers, figsize=(4.0 * n_layers, 4.0), squeeze=False)
        cmap = plt.get_cmap("tab10")
        for ax, layer, coords, ratio in zip(axes[0], pca["layers"], pca["coords"], pca["explained"], strict=True):
            n = pca["n_per_language"]
            for g, lang in enumerate(pca["languages"]):
                pts = coords[g * n : (g + 1) * n]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.7, color=cmap(g % 10), label=lang)
            ax.set_title(f"layer {layer} ({100 * (ratio[0] + ratio[1]):.0f}% var)")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"PCA of last-token states: {c}")
        fig.tight_layout()
        name = f"pca_{c}.png"
        written.append(_save(fig, out_dir, name))
    return written


def plot_centroids(report: dict[str, Any], out_dir: Path) -> list[str]:
    plt = _pyplot()
    written = []
    for c in conditions(report):
        cent = report["conditions"][c]["centroids"]
        langs = cent["languages"]
        n_layers = len(cent["layers"])
        fig, axes = plt.subplots(
            1, n_layers, figsize=(3.0 * n_layers + 1.2, 3.2), squeeze=False, constrained_layout=True
        )
        lo = min(min(min(r) for r in m) for m in cent["matrices"])
        vmin = min(lo, 0.99)
        image = None
        for ax, layer, matrix in zip(axes[0], cent["layers"], cent["matrices"], strict=True):
            image = ax.imshow(matrix, vmin=vmin, vmax=1.0, cmap="viridis")
            ax.set_xticks(range(len(langs)), langs)
            ax.set_yticks(range(len(langs)), langs)
            for i in range(len(langs)):
                for j in range(len(langs)):
                    value = matrix[i][j]
                    dark = (value - vmin) / max(1.0 - vmin, 1e-9) > 0.6
                    ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7, color="k" if dark else "w")
            ax.set_title(f"layer {layer}")
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
        fig.suptitle(f"cosine between language centroids: {c}")
        name = f"centroids_{c}.png"
        written.append(_save(fig, out_dir, name))
    return written


def write_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    return [*plot_curves(report, out_dir), *plot_pca(report, out_dir), *plot_centroids(report, out_dir)]


# --- schema -------------------------------------------------------------------------------------

_NUM = (int, float)
_TOP: dict[str, Any] = {
    "format": str,
    "created": str,
    "versions": dict,
    "settings": dict,
    "models": dict,
    "edit": (dict, type(None)),
    "control": (dict, type(None)),
    "data": dict,
    "layers": list,
    "mid_layers": list,
    "conditions": dict,
    "headline": list,
    "runtime": dict,
}
_SETTINGS = {"languages": list, "positions": str, "op": str, "seed": int, "n_pairs": int, "kl_top_k": int}
_DATA = {"source": str, "sha256": str, "rows": list, "n_pairs": int, "qa": (dict, type(None))}
_CONDITION = {
    "name": str,
    "source": str,
    "n_neurons": int,
    "representation": dict,
    "centroids": dict,
    "pca": dict,
    "lm": dict,
    "output_language": dict,
    "generations": dict,
    "qa": dict,
}
_REPRESENTATION = ("cos_parallel", "cos_nonparallel", "mutual_knn", "centroid_cos")
_LM = {"perplexity": _NUM, "nll_sum": _NUM, "n_tokens": int, "n_positions": int}
_HEADLINE = ("condition", "lang", "n_neurons", "mid_cos", "mid_cos_delta", "mid_knn", "ppl_en", "ppl_l2", "kl_en",
             "kl_l2", "top1_en", "top1_l2", "qa_f1", "qa_em", "lang_share")


def _check(obj: dict[str, Any], spec: dict[str, Any], where: str, errors: list[str]) -> None:
    for key, kind in spec.items():
        if key not in obj:
            errors.append(f"{where}: missing key '{key}'")
        elif not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            errors.append(f"{where}.{key}: expected {kind}, got {type(obj[key]).__name__}")


def validate_report(report: Any) -> list[str]:
    """Schema errors of a ``tnedit.report/1`` dict (required keys and types); [] when valid."""
    errors: list[str] = []
    if not isinstance(report, dict):
        return ["report: expected a JSON object"]
    _check(report, _TOP, "report", errors)
    if errors:
        return errors
    if report["format"] != REPORT_FORMAT:
        errors.append(f"report.format: expected '{REPORT_FORMAT}', got {report['format']!r}")
    _check(report["settings"], _SETTINGS, "settings", errors)
    _check(report["data"], _DATA, "data", errors)
    if "original" not in report["models"]:
        errors.append("models: missing key 'original'")
    if "original" not in report["conditions"]:
        errors.append("conditions: missing key 'original'")
    n_layers = len(report["layers"])
    langs = report["settings"].get("languages", [])
    for name, cond in report["conditions"].items():
        where = f"conditions.{name}"
        if not isinstance(cond, dict):
            errors.append(f"{where}: expected an object")
            continue
        _check(cond, _CONDITION, where, errors)
        for lang in langs:
            rep = cond.get("representation", {}).get(lang)
            if not isinstance(rep, dict):
                errors.append(f"{where}.representation: missing language '{lang}'")
                continue
            for key in _REPRESENTATION:
                values = rep.get(key)
                if not isinstance(values, list) or len(values) != n_layers or not all(
                    isinstance(v, _NUM) for v in values
                ):
                    errors.append(f"{where}.representation.{lang}.{key}: expected {n_layers} numbers")
        for lang, m in cond.get("lm", {}).items():
            if isinstance(m, dict):
                _check(m, _LM, f"{where}.lm.{lang}", errors)
    for i, row in enumerate(report["headline"]):
        missing = [k for k in _HEADLINE if k not in row]
        if missing:
            errors.append(f"headline[{i}]: missing keys {missing}")
    if not isinstance(report["runtime"].get("total_s"), _NUM):
        errors.append("runtime.total_s: expected a number")
    return errors

"""An evaluation's renderings: report.md, the console headline, and the evaluation section of an
edited checkpoint's model card. All read the ``tnedit.report/1`` dict; tables are in
:mod:`tnedit.evaluate.tables`, figures in :mod:`tnedit.evaluate.plots`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tnedit.errors import InputError
from tnedit.evaluate.tables import (
    Table,
    all_tables,
    harness_table,
    headline_table,
    render_console,
    render_markdown,
    selectivity_lines,
)
from tnedit.formats.card import update_card_section
from tnedit.formats.neurons import NeuronSet
from tnedit.formats.outputs import require_writable
from tnedit.formats.provenance import CARD_NAME, PROVENANCE_NAME

CARD_SECTION = "evaluation"


def _report_lines(report: dict[str, Any]) -> list[str]:
    """The bullet list at the top of report.md: models, edit, control, data, runtime."""
    s = report["settings"]
    edit = report["edit"]
    lines = [f"- original: `{report['models']['original']['name_or_path']}`"]
    if report["models"].get("edited"):
        lines.append(f"- edited: `{report['models']['edited']['name_or_path']}` (baked checkpoint)")
    if edit:
        what = "zero" if edit["op"] == "zero" else f"scale ×{edit['factor']:g}"
        what = f"scale by {edit['own_factors']}" if edit.get("own_factors") else what
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
    ]
    return lines


def _selectivity_markdown(report: dict[str, Any]) -> list[str]:
    lines = selectivity_lines(report)
    return [*(f"- {line}" for line in lines), ""] if lines else []


def summary_tables(report: dict[str, Any]) -> list[Table]:
    """The headline, and the lm-evaluation-harness table when the evaluation ran the harness."""
    harness = harness_table(report)
    return [headline_table(report)] + ([harness] if harness is not None else [])


def render_report_markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """report.md: what was compared, the headline, the plots (file names) and every detail table."""
    lines = ["# tnedit evaluation", "", *_report_lines(report), "", "## Summary", "",
             render_markdown(summary_tables(report)), *_selectivity_markdown(report)]
    if any("last" == (report["conditions"][c].get("positions")) for c in report["conditions"]):
        lines.append(
            "_A hook on the last token cannot change in-sentence perplexity; perplexity and KL are meaningful "
            "for all-position edits (as baked checkpoints are)._\n"
        )
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["## Details", "", render_markdown(all_tables(report)[1:])]
    return "\n".join(lines).rstrip() + "\n"


def card_markdown(data: dict[str, Any], plot_prefix: str | None = None) -> str:
    """The card's evaluation section: what was compared and the headline table (and the similarity plot)."""
    s = data["settings"]
    lines = [
        "## Evaluation",
        "",
        f"Original versus edited on {data['data']['n_pairs']} held-out parallel pairs "
        f"({s.get('english', 'en')}–{', '.join(s['languages'])}), evaluated with `tnedit evaluate` "
        f"({data['created']}).",
        "",
        render_markdown([headline_table(data)]).replace("### Headline\n", "").strip(),
        "",
        *_selectivity_markdown(data),
    ]
    harness = harness_table(data)
    if harness is not None:
        lines += [render_markdown([harness]).strip(), ""]
    if plot_prefix is not None:
        lines += [f"![en–L2 similarity per layer]({plot_prefix}similarity.png)", ""]
    return "\n".join(lines)


@dataclass
class EvaluationReport:
    """The machine-readable result (``data``, a ``tnedit.report/1`` dict) and its renderings."""

    data: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def headline(self) -> Table:
        return headline_table(self.data)

    def console(self) -> str:
        return render_console(summary_tables(self.data)) + "".join(f"{line}\n" for line in selectivity_lines(self.data))

    def markdown(self, plots: Sequence[str] = ()) -> str:
        return render_report_markdown(self.data, plots)

    def card_markdown(self, plot_prefix: str | None = None) -> str:
        return card_markdown(self.data, plot_prefix)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, ensure_ascii=False) + "\n"


def local_path(path: str | Path | NeuronSet | None) -> Path | None:
    """``path`` when it names something on this machine (not a Hub id, the built-in data or a neuron list)."""
    if path is None or isinstance(path, NeuronSet):
        return None
    local = Path(path).expanduser()
    return local if local.exists() else None


def check_card_dir(card_dir: str | Path, original: str | Path | None = None) -> Path:
    """``--update-card DIR`` must be a checkpoint written by ``tnedit apply`` (it has tnedit.json), never ORIGINAL."""
    card_dir = Path(card_dir)
    if not card_dir.is_dir():
        raise InputError(f"--update-card: {card_dir} is not a directory")
    local = local_path(original)
    if local is not None and local.is_dir() and os.path.samefile(card_dir, local):
        raise InputError(f"--update-card: {card_dir} is ORIGINAL; only an edited checkpoint's card gets the "
                         "evaluation (usually EDITED's)")
    if not (card_dir / PROVENANCE_NAME).is_file():
        raise InputError(f"--update-card: {card_dir} has no {PROVENANCE_NAME}; only a checkpoint written by "
                         "`tnedit apply` gets an evaluation section in its card")
    require_writable(card_dir, "--update-card")  # checked before the evaluation, not after it
    return card_dir


def update_card(report: EvaluationReport | dict[str, Any], card_dir: str | Path,
                report_dir: str | Path | None = None) -> Path:
    """Put the headline table into ``card_dir/README.md`` between the evaluation markers, atomically.

    ``card_dir`` must be a checkpoint written by ``tnedit apply`` (see :func:`check_card_dir`).
    """
    data = report.data if isinstance(report, EvaluationReport) else report
    card_dir = check_card_dir(card_dir)
    prefix = None
    if report_dir is not None:
        try:
            prefix = Path(report_dir).resolve().relative_to(card_dir.resolve()).as_posix() + "/"
        except ValueError:
            prefix = None
    path = card_dir / CARD_NAME
    update_card_section(path, CARD_SECTION, card_markdown(data, prefix))
    return path

"""Original-versus-edited evaluation: similarity of representations, language modelling, QA, output language.

One concern per module: ``settings`` (:class:`EvaluateSettings`, the one validation), ``plan`` (the edit
under test, the control, the consistency checks), ``passes`` (the batched forward passes per condition),
``generation`` (greedy continuations, QA, :func:`last_token_states`), ``metrics``/``answers``/``langid``
(pure metrics), ``summary`` (per-condition numbers, the headline), ``pipeline`` (:func:`run_evaluation`,
:func:`write_report`), ``tables``/``report``/``plots`` (renderings and the model-card section). The
public names below are imported lazily, so ``import tnedit.evaluate.settings`` (what the CLI needs for
``--help``) stays light.
"""

from __future__ import annotations

from tnedit.exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "EvaluateSettings": "tnedit.evaluate.settings",
    "GenerationSettings": "tnedit.evaluate.settings",
    "run_evaluation": "tnedit.evaluate.pipeline",
    "write_report": "tnedit.evaluate.pipeline",
    "check_report_dir": "tnedit.evaluate.pipeline",
    "load_pairs": "tnedit.evaluate.pipeline",
    "load_qa_sets": "tnedit.evaluate.pipeline",
    "count_rows": "tnedit.evaluate.pipeline",
    "EvaluationReport": "tnedit.evaluate.report",
    "update_card": "tnedit.evaluate.report",
    "check_card_dir": "tnedit.evaluate.report",
    "card_markdown": "tnedit.evaluate.report",
    "render_report_markdown": "tnedit.evaluate.report",
    "CARD_SECTION": "tnedit.evaluate.report",
    "Plan": "tnedit.evaluate.plan",
    "plan_evaluation": "tnedit.evaluate.plan",
    "check_tokenizers": "tnedit.evaluate.plan",
    "Condition": "tnedit.evaluate.passes",
    "Accumulator": "tnedit.evaluate.passes",
    "forward": "tnedit.evaluate.passes",
    "run_generation": "tnedit.evaluate.generation",
    "last_token_states": "tnedit.evaluate.generation",
    "Table": "tnedit.evaluate.tables",
    "headline_table": "tnedit.evaluate.tables",
    "write_plots": "tnedit.evaluate.plots",
    "REPORT_FORMAT": "tnedit.formats.report",
    "Report": "tnedit.formats.report",
    "report_errors": "tnedit.formats.report",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Original-versus-edited evaluation from settings to report: :func:`run_evaluation` and :func:`write_report`.

Conditions are ``original``, ``edited`` (a baked checkpoint directory, or a :class:`RuntimeEdit`
hook on the original) and optionally ``control`` (random neurons from the same candidate layers,
always a hook on the original). With a hook, one loaded model serves every condition: each batch
runs once per condition, hidden states (via :class:`LastTokenCapture`) and logits come from the
same forward pass, and the original's log-probabilities live only while that batch is processed,
so KL(original ‖ edited) is exact. With a baked directory the two models are loaded one after the
other (the first freed before the second loads); the original's top-``kl_top_k`` log-probabilities
per token are cached (12 bytes × k per token: ~50 MB for 200 pairs at k = 1024) and the edited
model's KL is computed against them plus one "rest" bucket: the exact KL of the two distributions
coarse-grained onto {top-k tokens, rest}, a lower bound on the full KL, equal to it when
``kl_top_k`` ≥ the vocabulary. Top-1 agreement and perplexity stay exact.
"""

from __future__ import annotations

import functools
import gc
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tnedit.checkpoint import resolve_source
from tnedit.corpus import load_corpus
from tnedit.errors import InputError
from tnedit.evaluate.generation import run_generation
from tnedit.evaluate.harness import HarnessPlan, check_harness, condition_results, harness_setup, run_harness
from tnedit.evaluate.langid import resolve_detector
from tnedit.evaluate.metrics import derangement, mid_layers
from tnedit.evaluate.passes import Accumulator, Condition, LogprobCache, forward
from tnedit.evaluate.plan import Plan, overlap_warning, plan_control, plan_evaluation
from tnedit.evaluate.plots import write_plots
from tnedit.evaluate.report import EvaluationReport, local_path, render_report_markdown
from tnedit.evaluate.settings import EvaluateSettings
from tnedit.evaluate.summary import headline_rows, selectivity_rows, summarise_condition
from tnedit.formats.digest import sha256_texts
from tnedit.formats.outputs import atomic_directory, check_output_dir, require_writable, write_json
from tnedit.formats.report import REPORT_FORMAT, REPORT_MARKDOWN_NAME, REPORT_NAME, check_report
from tnedit.model.distributed import SINGLE, World, join_world, rank_reporter
from tnedit.model.loading import LoadedModel, load_model
from tnedit.qa import QAItem, load_qa
from tnedit.reporting import ProgressBar, Reporter, resolve_reporter
from tnedit.versions import package_versions

# --- inputs -------------------------------------------------------------------------------------


def load_pairs(s: EvaluateSettings) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Rows ``skip .. skip + n_pairs`` of the parallel corpus, per language (English first)."""
    langs = [s.english, *s.languages]
    corpus = load_corpus(s.data, langs, limit=s.skip + s.n_pairs, min_rows=2)
    columns = {lang: list(corpus.column(lang))[s.skip : s.skip + s.n_pairs] for lang in langs}
    n = len(columns[s.english])
    if n < 2:  # fewer rows than the limit were read, so len(corpus) is every row the data has
        raise InputError(
            f"{corpus.source}: has {len(corpus)} rows; --skip {s.skip} leaves {n}, and the evaluation needs at "
            f"least 2 parallel pairs (use --skip {max(0, len(corpus) - s.n_pairs)} or less)"
        )
    info = {
        "source": str(corpus.source),
        "sha256": sha256_texts([t for lang in langs for t in columns[lang]]),
        "corpus_sha256": getattr(corpus, "sha256", None),
        "languages": langs,
        "rows": [s.skip, s.skip + n],
        "n_pairs": n,
        "requested_pairs": s.n_pairs,
    }
    return columns, info


def count_rows(s: EvaluateSettings, limit: int) -> int:
    """How many rows the evaluation data has, counting up to ``limit``."""
    return len(load_corpus(s.data, [s.english, *s.languages], limit=limit, min_rows=0))


def load_qa_sets(s: EvaluateSettings) -> tuple[dict[str, tuple[list[QAItem], list[QAItem]]], dict[str, Any] | None]:
    """Per L2 language: (few-shot examples, evaluation items)."""
    if s.n_qa == 0:
        return {}, None
    out: dict[str, tuple[list[QAItem], list[QAItem]]] = {}
    counts = {}
    for lang in s.languages:
        items = list(load_qa(s.qa, lang))
        if len(items) <= s.qa_shots:
            raise InputError(
                f"{s.qa or 'built-in QA set'}: {len(items)} item(s) for '{lang}', need more than "
                f"--qa-shots {s.qa_shots}"
            )
        out[lang] = (items[: s.qa_shots], items[s.qa_shots : s.qa_shots + s.n_qa])
        counts[lang] = len(out[lang][1])
    texts = [f"{it.id}\t{it.question}\t{'|'.join(it.answers)}" for sh, ev in out.values() for it in [*sh, *ev]]
    return out, {"source": s.qa or "built-in", "sha256": sha256_texts(texts), "n": counts, "shots": s.qa_shots}


# --- running ------------------------------------------------------------------------------------


class _WarningLog(Reporter):
    """The caller's reporter, also keeping every warning for the report's ``warnings``."""

    def __init__(self, inner: Reporter):
        self.inner = inner
        self.shows_bars = inner.shows_bars
        self.warnings: list[str] = []

    def bar(self, total: int, desc: str, unit: str = "batch", initial: int = 0) -> ProgressBar:
        return self.inner.bar(total, desc, unit, initial)

    def log(self, message: str) -> None:
        self.inner.log(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.inner.warn(message)


class _Timer:
    """Seconds per stage (load_s, forward_s, generate_s), each stage announced as an ``evaluate:`` line."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str, message: str | None = None) -> Iterator[None]:
        if message:
            self.reporter.log(f"evaluate: {message}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@dataclass
class _Inputs:
    """What every stage reads: the resolved settings, the plan, the sentences and the QA sets."""

    s: EvaluateSettings
    plan: Plan
    texts: dict[str, list[str]]
    qa_sets: dict[str, Any]
    timer: _Timer
    reporter: Reporter
    harness: HarnessPlan | None = None
    world: World = SINGLE


@dataclass
class _Runs:
    """What the passes produced, per condition, and the facts about the models."""

    conds: list[Condition]
    accs: dict[str, Accumulator]
    gens: dict[str, Any]
    n_layers: int
    control_info: dict[str, Any] | None
    original_info: dict[str, Any]
    device: str
    edited_info: dict[str, Any] | None = None
    harness: dict[str, dict[str, Any]] = field(default_factory=dict)  # condition -> the harness's raw results


def _collect() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_original(run: _Inputs, original_path: Path) -> tuple[_Runs, LogprobCache | None]:
    """The original model's pass: the original, and every hook condition (edit, control) on it."""
    s, plan = run.s, run.plan
    with run.timer.stage("load_s", f"loading {s.original}"):
        lm = load_model(s.original, revision=s.revision, dtype=s.dtype, device=s.device)
    n_layers = len(lm.layers)
    control, control_info = plan_control(plan, lm.neuron_space, s.seed) if s.control else (None, None)
    conds = [c for c in (Condition("original", "original"), plan.edited, control) if c is not None]
    first_pass = [c for c in conds if c.kind != "baked"]
    sizes = {lang: len(v) for lang, v in run.texts.items()}
    accs = {c.name: Accumulator(sizes) for c in conds}
    cache: LogprobCache | None = {} if plan.edited.kind == "baked" else None
    with run.timer.stage("forward_s"):
        forward(lm, run.texts, first_pass, accs, batch_size=s.batch_size, kl_top_k=s.kl_top_k, cache=cache,
                reporter=run.reporter, world=run.world)
    gens: dict[str, Any] = {}
    for cond in first_pass:
        with run.timer.stage("generate_s", f"generation and QA: {cond.name}"):
            gens[cond.name] = run_generation(lm, cond, run.texts, run.qa_sets, s.generation, reporter=run.reporter,
                                             world=run.world)
    original_info = {**asdict(lm.model_info()), "path": str(original_path), "dtype": str(lm.dtype),
                     "tokenizer": lm.tokenizer_facts()}
    runs = _Runs(conds, accs, gens, n_layers, control_info, original_info, str(lm.device))
    for cond in first_pass:
        _run_harness(run, runs, lm, cond)
    return runs, cache


def _run_harness(run: _Inputs, runs: _Runs, lm: LoadedModel, cond: Condition) -> None:
    if run.harness is not None:
        with run.timer.stage("lm_eval_s"):
            runs.harness[cond.name] = run_harness(lm, cond, run.harness, run.reporter)


def _run_baked(run: _Inputs, runs: _Runs, cache: LogprobCache | None) -> None:
    """The baked EDITED_DIR's pass, loaded after the original is freed; KL against the cached top-k."""
    s, plan = run.s, run.plan
    with run.timer.stage("load_s", f"loading {s.edited}"):
        lm = load_model(str(s.edited), dtype=s.dtype, device=s.device)
    if len(lm.layers) != runs.n_layers:
        raise InputError(f"EDITED has {len(lm.layers)} layers, ORIGINAL {runs.n_layers}")
    with run.timer.stage("forward_s"):
        forward(lm, run.texts, [plan.edited], runs.accs, batch_size=s.batch_size, kl_top_k=s.kl_top_k,
                reference=cache, reporter=run.reporter, world=run.world)
    with run.timer.stage("generate_s", "generation and QA: edited"):
        runs.gens["edited"] = run_generation(lm, plan.edited, run.texts, run.qa_sets, s.generation,
                                             reporter=run.reporter, world=run.world)
    _run_harness(run, runs, lm, plan.edited)
    runs.edited_info = {"name_or_path": str(s.edited), "fingerprint": lm.fingerprint(), "dtype": str(lm.dtype),
                        "tokenizer_check": plan.tokenizer_check}


def _report_data(run: _Inputs, runs: _Runs, data_info: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    s, n_layers = run.s, runs.n_layers
    perm = derangement(len(run.texts[s.english]), s.seed)
    data: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "settings": s.to_dict(),
        "models": {"original": runs.original_info, "edited": runs.edited_info},
        "edit": run.plan.edit_info,
        "control": runs.control_info,
        "data": data_info,
        "layers": list(range(n_layers)),
        "mid_layers": mid_layers(n_layers),
        "seeds": {"control": s.seed, "nonparallel_derangement": s.seed},
        "conditions": {c.name: summarise_condition(runs.accs[c.name], c, s, n_layers, perm, runs.gens[c.name])
                       for c in runs.conds},
        "warnings": warnings,
    }
    data["headline"] = headline_rows(data, s.english, s.languages)
    data["selectivity"] = selectivity_rows(data, s.english, s.languages)
    if run.harness is not None:
        data["lm_eval"] = {c.name: condition_results(runs.harness[c.name], run.harness.tasks) for c in runs.conds}
        data["lm_eval_setup"] = {**harness_setup(runs.harness["original"], run.harness),
                                 "positions": run.plan.edited.positions}
    return data


def harness_plan(s: EvaluateSettings, reporter: Reporter) -> HarnessPlan | None:
    """The harness run of a resolved evaluation, checked (installed, tasks known); None without --lm-eval."""
    if not s.lm_eval:
        return None
    plan = HarnessPlan(tuple(s.lm_eval), s.lm_eval_include, s.lm_eval_limit, s.lm_eval_fewshot,
                       s.lm_eval_batch_size, quiet=not reporter.shows_bars)
    return check_harness(plan)


def run_evaluation(settings: EvaluateSettings, *, reporter: Reporter | None = None) -> EvaluationReport:
    """Run every condition and return the report (nothing is written; see :func:`write_report`).

    Hook edits: one model; each batch runs original, edited and control back to back. Baked
    EDITED_DIR: the original (and the control, a hook on it) first, then the edited model, loaded
    after the original is freed; KL uses the original's cached top-``kl_top_k`` log-probs.

    Under a launcher the ranks share the forward passes and the generations, and every rank returns the
    same report; lm-evaluation-harness runs whole on every rank (it is not sharded), so no rank waits.
    """
    started = time.perf_counter()
    world = join_world(settings.device)
    log = _WarningLog(rank_reporter(world, resolve_reporter(reporter)))
    s = settings.resolve()
    s = replace(s, langid=resolve_detector(s.langid))
    harness = harness_plan(s, log)
    texts, data_info = load_pairs(s)
    if data_info["n_pairs"] < s.n_pairs:
        log.warn(f"only {data_info['n_pairs']} pairs available after --skip {s.skip} (asked for {s.n_pairs})")
    qa_sets, data_info["qa"] = load_qa_sets(s)
    original_path = resolve_source(s.original, revision=s.revision).path
    plan = plan_evaluation(s, original_path, texts, reporter=log)
    overlap = overlap_warning(plan, data_info, functools.partial(count_rows, s), skip=s.skip, n_pairs=s.n_pairs)
    if overlap:
        log.warn(overlap)
    run = _Inputs(s, plan, texts, qa_sets, _Timer(log), log, harness, world)
    runs, cache = _run_original(run, original_path)
    _collect()  # the original is freed before a baked EDITED_DIR loads
    if plan.edited.kind == "baked":
        _run_baked(run, runs, cache)
        del cache
        _collect()
    data = _report_data(run, runs, data_info, log.warnings)
    run.timer.seconds["total_s"] = time.perf_counter() - started
    data["runtime"] = {**{k: round(v, 2) for k, v in run.timer.seconds.items()}, "device": runs.device,
                       **({"ranks": world.size} if world.is_distributed else {})}
    return EvaluationReport(data, log.warnings)


# --- output -------------------------------------------------------------------------------------


def check_report_dir(out: str | Path, settings: EvaluateSettings, overwrite: bool = False,
                     card_dir: str | Path | None = None) -> None:
    """Refuse a report directory that would destroy or live inside something the evaluation reads.

    OUT must not be, contain or lie inside ORIGINAL, EDITED or the ``--update-card`` directory, and
    must not be or contain the neurons file, ``--data`` or ``--qa`` (``--overwrite`` would delete them).
    Cheap: run it before any model is loaded.
    """
    sources = [p for p in map(local_path, (settings.original, settings.edited, card_dir)) if p is not None]
    inputs = [p for p in map(local_path, (settings.neurons, settings.data, settings.qa)) if p is not None]
    for source in sources or [None]:
        check_output_dir(out, source=source, overwrite=overwrite, inputs=inputs)
    require_writable(out, "-o")


def write_report(report: EvaluationReport | dict[str, Any], out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write report.json, report.md and the PNG plots into ``out_dir``, atomically."""
    data = report.data if isinstance(report, EvaluationReport) else report
    check_report(data)
    out = Path(out_dir)
    check_output_dir(out, overwrite=overwrite)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_json(tmp / REPORT_NAME, data)
        plots = write_plots(data, tmp)
        (tmp / REPORT_MARKDOWN_NAME).write_text(render_report_markdown(data, plots), encoding="utf-8")
    return out

"""Running a recipe: identify → apply (each edit) → evaluate (each edit) → push, skipping unchanged steps.

Each step writes a stamp under ``OUTPUT/.tnedit-steps/`` with the hash of the settings it depends on; a
rerun skips a step whose stamp matches and whose output exists, unless forced. Hashes chain: a step's
hash covers everything upstream of it. Each step's output (identify's neuron sets, an edited
checkpoint, a report), ``recipe.json`` and the stamps appear atomically.

A step is a verb's settings class plus a few recipe keys; :func:`verb_settings` turns it into the verb's
own settings, filling what the recipe gives elsewhere (the model, the data, the output).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tnedit.edit import apply_to_checkpoint
from tnedit.edit.settings import ApplySettings
from tnedit.errors import RecipeError
from tnedit.evaluate import run_evaluation, update_card, write_report
from tnedit.evaluate.settings import EvaluateSettings
from tnedit.formats.digest import sha256_json
from tnedit.formats.neurons import load_neurons
from tnedit.formats.outputs import atomic_directory, write_json
from tnedit.hub import PushSettings, push_checkpoint
from tnedit.identify import run_identify, run_lape
from tnedit.identify.settings import IdentifySettings, lape_settings
from tnedit.recipes.paths import check_inputs, check_output_location
from tnedit.recipes.schema import (
    SELECTIVE,
    EditStep,
    Recipe,
    edit_languages,
    identify_ref,
    lape_languages,
    recipe_to_dict,
    step_to_dict,
)
from tnedit.reporting import Reporter, resolve_reporter
from tnedit.settings import settings_to_dict
from tnedit.tune.pipeline import run_tune
from tnedit.tune.settings import TuneSettings

STAMPS = ".tnedit-steps"

Settings = TypeVar("Settings")


def verb_settings(step: Any, cls: type[Settings], **filled: Any) -> Settings:
    """The verb's own settings ``cls`` of a recipe step: the step's values of its fields, ``filled`` replacing some."""
    values = {f.name: getattr(step, f.name) for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    return cls(**{**values, **filled})


def settings_hash(*parts: Any) -> str:
    """The stamp digest of the settings a step depends on (settings dataclasses as their field mappings)."""
    plain = [settings_to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return sha256_json(plain, length=16, sort_keys=True, default=str)


def _stamp_matches(stamp: Path, directory: Path, digest: str) -> bool:
    if not stamp.is_file() or not directory.exists():
        return False
    try:
        return json.loads(stamp.read_text(encoding="utf-8")).get("settings_hash") == digest
    except json.JSONDecodeError:
        return False


def _write_stamp(stamp: Path, digest: str, step: str, seconds: float) -> None:
    write_json(stamp, {"step": step, "settings_hash": digest, "seconds": round(seconds, 2)})


@dataclass
class StepResult:
    step: str
    name: str
    path: str
    skipped: bool
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    recipe: Recipe
    steps: list[StepResult]
    headline: list[dict[str, Any]] = field(default_factory=list)
    report_paths: list[str] = field(default_factory=list)


class RecipeRunner:
    """Runs identify → apply (each edit) → evaluate (each edit) → push, skipping unchanged steps."""

    def __init__(self, recipe: Recipe, *, force: bool = False, reporter: Reporter | None = None):
        self.recipe = recipe
        self.force = force
        self.reporter = resolve_reporter(reporter)
        self.out = Path(recipe.output)
        self.steps: list[StepResult] = []

    # Hashes chain: a step's hash covers everything upstream of it.
    def _identify_hash(self) -> str:
        r = self.recipe
        return settings_hash("identify", r.model, r.languages, r.data.source, r.data.identify_rows,
                             step_to_dict(r.identify))

    def _tune_hash(self, lang: str) -> str:
        r = self.recipe
        return settings_hash("tune", r.model, lang, r.data.source, r.data.identify_rows, step_to_dict(r.tune))

    def _edit_hash(self, edit: EditStep) -> str:
        ref = identify_ref(edit.neurons)
        upstream = self._tune_hash(ref[0]) if ref and ref[1] == SELECTIVE else self._identify_hash()
        return settings_hash("apply", upstream, step_to_dict(edit))

    def _evaluate_hash(self, edit: EditStep) -> str:
        return settings_hash("evaluate", self._edit_hash(edit), self.recipe.data, step_to_dict(self.recipe.evaluate))

    def _step(
        self, step: str, name: str, directory: Path, digest: str, work: Callable[[], dict[str, Any]]
    ) -> StepResult:
        # Stamps live beside the outputs, not in them: an edited checkpoint must stay a clean model dir.
        stamp = self.out / STAMPS / f"{step}-{name}.json"
        if not self.force and _stamp_matches(stamp, directory, digest):
            self.reporter.log(f"[{step}] {name}: up to date, skipped ({directory})")
            result = StepResult(step, name, str(directory), True, 0.0)
        else:
            self.reporter.log(f"[{step}] {name} ...")
            start = time.perf_counter()
            summary = work()
            seconds = time.perf_counter() - start
            _write_stamp(stamp, digest, step, seconds)
            self.reporter.log(f"[{step}] {name}: done in {seconds:.1f}s ({directory})")
            result = StepResult(step, name, str(directory), False, seconds, summary)
        self.steps.append(result)
        return result

    def run(self) -> RunResult:
        check_inputs(self.recipe, self.recipe.name)
        check_output_location(self.recipe, self.recipe.name)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "recipe.json", recipe_to_dict(self.recipe))
        if self.recipe.identify.enabled:
            identify_dir = self.out / "identify"
            self._step("identify", self.recipe.identify.method, identify_dir, self._identify_hash(), self._identify)
        if self.recipe.tune.enabled:
            for lang in self.recipe.languages:
                self._step("tune", lang, self._tuned_file(lang), self._tune_hash(lang),
                           lambda lang=lang: self._tune(lang))
        result = RunResult(self.recipe, self.steps)
        for edit in self.recipe.edits:
            self._edit_steps(edit, result)
        if self.recipe.push.repo:
            self._push()
        return result

    def _edit_steps(self, edit: EditStep, result: RunResult) -> None:
        edit_dir = self.out / "edits" / edit.name
        self._step("apply", edit.name, edit_dir, self._edit_hash(edit), lambda: self._apply(edit, edit_dir))
        if not self.recipe.evaluate.enabled:
            return
        report_dir = self.out / "reports" / edit.name
        self._step("evaluate", edit.name, report_dir, self._evaluate_hash(edit),
                   lambda: self._evaluate(edit, edit_dir, report_dir))
        result.report_paths.append(str(report_dir / "report.md"))
        result.headline += self._headline(edit.name, report_dir)

    # --- steps ---

    def _identify(self) -> dict[str, Any]:
        # Every neuron set of the step appears at once: a step cut short leaves the previous ones.
        with atomic_directory(self.out / "identify", overwrite=True) as directory:
            return self._identify_into(directory)

    def _identify_settings(self) -> IdentifySettings:
        """The identify step's settings with the recipe's model and identify rows (languages and data per run)."""
        r = self.recipe
        return verb_settings(r.identify, IdentifySettings, model=r.model.name, revision=r.model.revision,
                             dtype=r.model.dtype, device=r.model.device, limit=r.data.identify_rows)

    def _identify_into(self, directory: Path) -> dict[str, Any]:
        r = self.recipe
        settings = self._identify_settings()
        if r.identify.method == "lape":
            lape = lape_settings(settings, langs=lape_languages(r), data=r.data.resolve(r.data.source, r.languages[0]))
            sets = run_lape(lape, reporter=self.reporter)
            for lang, neuron_set in sets.items():
                neuron_set.save(directory / f"neurons-{lang}-lape.json")
            return {"sets": {lang: len(neuron_set) for lang, neuron_set in sets.items()}}
        per_language = "{lang}" in r.data.source
        groups = [[lang] for lang in r.languages] if per_language else [list(r.languages)]
        summaries = []
        for langs in groups:
            run = dataclasses.replace(settings, langs=langs, data=r.data.resolve(r.data.source, langs[0]),
                                      output=directory)
            summaries.append(run_identify(run, reporter=self.reporter).summary())
        return {"runs": summaries}

    def _tuned_file(self, lang: str) -> Path:
        return self.out / "tune" / f"neurons-{lang}-{SELECTIVE}.json"

    def _tune(self, lang: str) -> dict[str, Any]:
        r = self.recipe
        data = [r.data.resolve(r.data.source, lang), *r.tune.keep_data]
        settings = verb_settings(r.tune, TuneSettings, model=r.model.name, lang=lang,
                                 data=[d for d in data if d is not None], limit=r.data.identify_rows,
                                 dtype=r.model.dtype, device=r.model.device, revision=r.model.revision,
                                 output=str(self.out / "tune"), resume=True)
        return run_tune(settings, reporter=self.reporter).summary()

    def _neuron_file(self, edit: EditStep) -> Path:
        ref = identify_ref(edit.neurons)
        if ref is None:
            return Path(edit.neurons)
        lang, kind = ref
        if kind == SELECTIVE:
            path = self._tuned_file(lang)
            if not path.is_file():
                raise RecipeError(f"edit '{edit.name}': the tune step wrote no {path} for neurons '{edit.neurons}'")
            return path
        name = f"neurons-{lang}-lape.json" if kind == "lape" else f"neurons-{lang}-type{kind}.json"
        path = self.out / "identify" / name
        if not path.is_file():
            raise RecipeError(f"edit '{edit.name}': the identify step wrote no {path} for neurons '{edit.neurons}'")
        return path

    def _apply(self, edit: EditStep, directory: Path) -> dict[str, Any]:
        source = self._neuron_file(edit)
        neuron_set = load_neurons(source)
        settings = verb_settings(edit, ApplySettings, model=self.recipe.model.name, neurons=str(source),
                                 out=str(directory), revision=self.recipe.model.revision, overwrite=True)
        spec = settings.edit_spec(neuron_set)
        result = apply_to_checkpoint(settings.model, spec, directory, neuron_set=neuron_set, neuron_source=str(source),
                                     options=settings.options(command=f"tnedit run ({self.recipe.name})"),
                                     reporter=self.reporter)
        return {"n_neurons": len(spec.neurons), "per_layer": spec.per_layer_counts(), "out": str(result.out)}

    def _evaluate_settings(self, edit: EditStep, edit_dir: Path) -> EvaluateSettings:
        r, step = self.recipe, self.recipe.evaluate
        langs = edit_languages(r, edit)
        held_out = r.data.evaluate_source is None
        source = r.data.source if held_out else str(r.data.evaluate_source)
        metrics = set(step.metrics)
        generation = "generation" in metrics
        settings = verb_settings(
            step, EvaluateSettings, original=r.model.name, languages=langs,
            data=r.data.resolve(source, langs[0]), skip=(r.data.identify_rows or 0) if held_out else 0,
            n_pairs=r.data.evaluate_rows, n_qa=step.n_qa if "qa" in metrics else 0,
            n_gen=step.n_gen if generation else 0, n_langid=step.n_langid if generation else 0,
            dtype=r.model.dtype, device=r.model.device, revision=r.model.revision,
            lm_eval=[task.replace("{lang}", lang) for task in step.lm_eval for lang in langs],
        )
        if step.positions in (None, "all"):
            return dataclasses.replace(settings, edited=str(edit_dir))
        # A baked checkpoint edits every position; the paper's last/prompt positions need the hook.
        return dataclasses.replace(settings, neurons=str(self._neuron_file(edit)), op=edit.op, factor=edit.factor,
                                   top_k=edit.top_k, layers=edit.layers)

    def _evaluate(self, edit: EditStep, edit_dir: Path, report_dir: Path) -> dict[str, Any]:
        report = run_evaluation(self._evaluate_settings(edit, edit_dir), reporter=self.reporter)
        write_report(report, report_dir, overwrite=True)
        update_card(report, edit_dir)
        return {"headline": report.data.get("headline")}

    def _headline(self, name: str, report_dir: Path) -> list[dict[str, Any]]:
        path = report_dir / "report.json"
        if not path.is_file():
            return []
        rows = json.loads(path.read_text(encoding="utf-8")).get("headline") or []
        return [{"edit": name, **row} for row in rows]

    def _push(self) -> None:
        push = self.recipe.push
        name = push.edit or self.recipe.edits[0].name
        directory = self.out / "edits" / name
        start = time.perf_counter()
        result = push_checkpoint(verb_settings(push, PushSettings, dir=str(directory)), reporter=self.reporter)
        self.steps.append(StepResult("push", name, str(push.repo), False, time.perf_counter() - start,
                                     {"url": getattr(result, "url", None)}))

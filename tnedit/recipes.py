"""Recipes: one YAML file names a whole experiment; `tnedit run` executes it step by step.

A recipe validates into :class:`Recipe`, a tree of dataclasses. Unknown keys are rejected with
the nearest valid key suggested. Each step writes a stamp under ``OUTPUT/.tnedit-steps/`` with the hash of
the settings it depends on; a rerun skips a step whose stamp matches, unless forced.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tnedit.errors import RecipeError

STAMPS = ".tnedit-steps"


@dataclass
class ModelSettings:
    name: str = ""
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"


@dataclass
class DataSettings:
    """Parallel sentences: ``builtin`` (the packaged corpus), a TSV/JSONL path or ``hf:NAME``.

    ``{lang}`` in a source is replaced by each target language (one file per language pair).
    identify reads the first ``identify_rows`` rows. evaluate reads ``evaluate_rows`` rows of
    ``evaluate_source``, or of ``source`` after the identify rows when it is not set.
    """

    source: str = "builtin"
    identify_rows: int | None = None
    evaluate_source: str | None = None
    evaluate_rows: int = 200

    def resolve(self, source: str, lang: str) -> str | None:
        """The data argument for one language: None means the built-in corpus."""
        return None if source == "builtin" else source.replace("{lang}", lang)


@dataclass
class IdentifyStep:
    method: str = "transfer"  # transfer | lape
    type: Any = 1  # 1 | 2 | both
    k: int = 1000
    layers: Any = None  # None = the paper's split; "0-19", "0.0:0.625" or a list
    batch_size: int = 16
    lape_languages: list[str] = field(default_factory=list)


@dataclass
class EditStep:
    """One edited checkpoint. ``neurons`` is ``LANG:TYPE`` (an identify output) or a file path."""

    name: str = ""
    neurons: str = ""
    op: str = "zero"
    factor: float | None = None
    top_k: int | None = None
    layers: Any = None


@dataclass
class EvaluateStep:
    enabled: bool = True
    control: str | None = "random"
    positions: str = "all"
    seed: int = 42
    metrics: list[str] = field(default_factory=lambda: ["representations", "perplexity", "generation", "qa"])
    n_qa: int = 50
    n_gen: int = 3


@dataclass
class PushStep:
    repo: str | None = None
    private: bool = True
    edit: str | None = None  # which edit to push; default: the first


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    model: ModelSettings = field(default_factory=ModelSettings)
    languages: list[str] = field(default_factory=list)
    data: DataSettings = field(default_factory=DataSettings)
    identify: IdentifyStep = field(default_factory=IdentifyStep)
    edits: list[EditStep] = field(default_factory=list)
    evaluate: EvaluateStep = field(default_factory=EvaluateStep)
    output: str = ""
    push: PushStep = field(default_factory=PushStep)


EVALUATE_METRICS = ("representations", "perplexity", "generation", "qa")

# --- validation ----------------------------------------------------------------------------------


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise RecipeError(f"{where}: unknown key '{key}'{_suggest(str(key), valid)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _check(recipe: Recipe, where: str) -> Recipe:
    if not recipe.model.name:
        raise RecipeError(f"{where}: key 'model.name' is required (a Hub id or a local directory)")
    if not recipe.languages:
        raise RecipeError(f"{where}: key 'languages' must list at least one target language, e.g. [ja]")
    if recipe.identify.method not in ("transfer", "lape"):
        raise RecipeError(f"{where}: identify.method must be 'transfer' or 'lape', got {recipe.identify.method!r}")
    if str(recipe.identify.type) not in ("1", "2", "both"):
        raise RecipeError(f"{where}: identify.type must be 1, 2 or both, got {recipe.identify.type!r}")
    if recipe.identify.k < 1:
        raise RecipeError(f"{where}: identify.k must be at least 1")
    names = set()
    for i, edit in enumerate(recipe.edits):
        at = f"{where}: edits[{i}]"
        if not edit.name or not edit.neurons:
            raise RecipeError(f"{at}: keys 'name' and 'neurons' are required")
        if edit.name in names:
            raise RecipeError(f"{at}: duplicate edit name '{edit.name}'")
        names.add(edit.name)
        if edit.op not in ("zero", "scale"):
            raise RecipeError(f"{at}.op must be zero or scale, got {edit.op!r}")
        if edit.op == "scale" and edit.factor is None:
            raise RecipeError(f"{at}: op scale needs a factor")
    unknown = sorted(set(recipe.evaluate.metrics) - set(EVALUATE_METRICS))
    if unknown:
        raise RecipeError(f"{where}: evaluate.metrics: unknown {unknown}; valid: {list(EVALUATE_METRICS)}")
    if recipe.evaluate.positions not in ("all", "last", "prompt"):
        raise RecipeError(f"{where}: evaluate.positions must be all, last or prompt")
    if recipe.push.edit and recipe.push.edit not in names:
        raise RecipeError(f"{where}: push.edit '{recipe.push.edit}' names no edit; edits: {sorted(names)}")
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """``identify.k=500`` → (["identify", "k"], 500); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. identify.k=500")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"--set {text!r}: empty key")
    return path, yaml.safe_load(value) if value.strip() else None


def _apply_override(raw: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {'.'.join(path)}: '{part}' is not an index of {'.'.join(path[:i])}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"--set {'.'.join(path)}: '{last}' is not a valid index")
        node[int(last)] = value
    else:
        node[last] = value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: recipe file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{p}: not valid YAML{at}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: expected a mapping at the top level")
    for text in overrides:
        key_path, value = parse_override(text)
        _apply_override(raw, key_path, value, str(p))
    try:
        recipe = _build(Recipe, raw, "")
    except RecipeError as exc:
        raise RecipeError(f"{p}: {exc}") from None
    if not recipe.name:
        recipe.name = p.stem
    if not recipe.output:
        recipe.output = str(Path("runs") / recipe.name)
    return _check(recipe, str(p))


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


# --- running -------------------------------------------------------------------------------------


def _layer_spec(layers: Any) -> str | list[int] | None:
    """A recipe's ``layers`` as parse_layers takes it: a list stays a list, a YAML number becomes text."""
    return layers if layers is None or isinstance(layers, list) else str(layers)


def settings_hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stamp_matches(stamp: Path, directory: Path, digest: str) -> bool:
    if not stamp.is_file() or not directory.exists():
        return False
    try:
        return json.loads(stamp.read_text(encoding="utf-8")).get("settings_hash") == digest
    except json.JSONDecodeError:
        return False


def _write_stamp(stamp: Path, digest: str, step: str, seconds: float) -> None:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    record = {"step": step, "settings_hash": digest, "seconds": round(seconds, 2)}
    stamp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


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

    def __init__(
        self,
        recipe: Recipe,
        *,
        force: bool = False,
        quiet: bool = False,
        log: Callable[[str], None] = print,
        warn: Callable[[str], None] = print,
    ):
        self.recipe = recipe
        self.force = force
        self.quiet = quiet
        self.log = log
        self.warn = warn
        self.out = Path(recipe.output)
        self.steps: list[StepResult] = []

    # Hashes chain: a step's hash covers everything upstream of it.
    def _identify_hash(self) -> str:
        r = self.recipe
        return settings_hash("identify", r.model, r.languages, r.data.source, r.data.identify_rows, r.identify)

    def _edit_hash(self, edit: EditStep) -> str:
        return settings_hash("apply", self._identify_hash(), edit)

    def _evaluate_hash(self, edit: EditStep) -> str:
        r = self.recipe
        return settings_hash("evaluate", self._edit_hash(edit), r.data, r.evaluate)

    def _step(
        self, step: str, name: str, directory: Path, digest: str, work: Callable[[], dict[str, Any]]
    ) -> StepResult:
        # Stamps live beside the outputs, not in them: an edited checkpoint must stay a clean model dir.
        stamp = self.out / STAMPS / f"{step}-{name}.json"
        if not self.force and _stamp_matches(stamp, directory, digest):
            self.log(f"[{step}] {name}: up to date, skipped ({directory})")
            result = StepResult(step, name, str(directory), True, 0.0)
        else:
            self.log(f"[{step}] {name} ...")
            start = time.perf_counter()
            summary = work()
            seconds = time.perf_counter() - start
            _write_stamp(stamp, digest, step, seconds)
            self.log(f"[{step}] {name}: done in {seconds:.1f}s ({directory})")
            result = StepResult(step, name, str(directory), False, seconds, summary)
        self.steps.append(result)
        return result

    def run(self) -> RunResult:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.json").write_text(json.dumps(recipe_to_dict(self.recipe), indent=2) + "\n")
        identify_dir = self.out / "identify"
        self._step("identify", self.recipe.identify.method, identify_dir, self._identify_hash(), self._identify)
        result = RunResult(self.recipe, self.steps)
        for edit in self.recipe.edits:
            edit_dir = self.out / "edits" / edit.name
            self._step(
                "apply", edit.name, edit_dir, self._edit_hash(edit), lambda e=edit, d=edit_dir: self._apply(e, d)
            )
            if self.recipe.evaluate.enabled:
                report_dir = self.out / "reports" / edit.name
                self._step(
                    "evaluate",
                    edit.name,
                    report_dir,
                    self._evaluate_hash(edit),
                    lambda e=edit, d=edit_dir, o=report_dir: self._evaluate(e, d, o),
                )
                result.report_paths.append(str(report_dir / "report.md"))
                result.headline += self._headline(edit.name, report_dir)
        if self.recipe.push.repo:
            self._push()
        return result

    # --- steps ---

    def _pass_settings(self, langs: list[str], data_lang: str) -> dict[str, Any]:
        """The settings identify and LAPE share (tnedit.identify.PassSettings)."""
        r = self.recipe
        return dict(
            model=r.model.name,
            langs=langs,
            data=r.data.resolve(r.data.source, data_lang),
            layers=r.identify.layers,
            limit=r.data.identify_rows,
            batch_size=r.identify.batch_size,
            dtype=r.model.dtype,
            device=r.model.device,
            revision=r.model.revision,
            quiet=self.quiet,
        )

    def _identify(self) -> dict[str, Any]:
        r = self.recipe
        directory = self.out / "identify"
        directory.mkdir(parents=True, exist_ok=True)
        if r.identify.method == "lape":
            from tnedit.lape import LapeSettings, identify_lape

            langs = r.identify.lape_languages or ["en", *r.languages]
            sets = identify_lape(LapeSettings(**self._pass_settings(langs, r.languages[0])))
            for lang, ns in sets.items():
                ns.save(directory / f"neurons-{lang}-lape.json")
            return {"sets": {lang: len(ns) for lang, ns in sets.items()}}
        from tnedit.identify import IdentifySettings, identify

        per_language = "{lang}" in r.data.source
        groups = [[lang] for lang in r.languages] if per_language else [list(r.languages)]
        summaries = []
        for langs in groups:
            settings = IdentifySettings(
                **self._pass_settings(langs, langs[0]),
                type=r.identify.type,
                k=r.identify.k,
                output=directory,
                warn=self.warn,
            )
            summaries.append(identify(settings).summary())
        return {"runs": summaries}

    def _neuron_file(self, edit: EditStep) -> Path:
        ref = edit.neurons
        if Path(ref).is_file():
            return Path(ref)
        lang, _, kind = ref.partition(":")
        name = f"neurons-{lang}-lape.json" if kind == "lape" else f"neurons-{lang}-type{kind or '1'}.json"
        path = self.out / "identify" / name
        if not path.is_file():
            raise RecipeError(f"edit '{edit.name}': neurons '{ref}' is neither a file nor an identify output ({path})")
        return path

    def _apply(self, edit: EditStep, directory: Path) -> dict[str, Any]:
        from tnedit.edit import apply_to_checkpoint, make_edit_spec
        from tnedit.neurons import load_neurons, parse_layers

        source = self._neuron_file(edit)
        ns = load_neurons(source)
        layers = parse_layers(_layer_spec(edit.layers), ns.model.num_layers if ns.model else None)
        spec = make_edit_spec(ns, edit.op, edit.factor, top_k=edit.top_k, layers=layers)
        result = apply_to_checkpoint(
            self.recipe.model.name,
            spec,
            directory,
            neuron_set=ns,
            neuron_source=str(source),
            revision=self.recipe.model.revision,
            overwrite=True,
            command=f"tnedit run ({self.recipe.name})",
            progress=not self.quiet,
            warn=self.warn,
        )
        return {"n_neurons": len(spec.neurons), "per_layer": spec.per_layer_counts(), "out": str(result.out)}

    def _edit_languages(self, edit: EditStep) -> list[str]:
        lang = edit.neurons.partition(":")[0]
        return [lang] if lang in self.recipe.languages else list(self.recipe.languages)

    def _evaluate(self, edit: EditStep, edit_dir: Path, report_dir: Path) -> dict[str, Any]:
        from tnedit.evaluate import EvaluateSettings, evaluate, update_card, write_report

        r, ev = self.recipe, self.recipe.evaluate
        langs = self._edit_languages(edit)
        held_out = r.data.evaluate_source is None
        source = r.data.source if held_out else str(r.data.evaluate_source)
        metrics = set(ev.metrics)
        settings = EvaluateSettings(
            original=r.model.name,
            languages=langs,
            # A baked checkpoint edits every position; the paper's last/prompt positions need the hook.
            **self._edit_under_test(edit, edit_dir),
            control=ev.control,
            seed=ev.seed,
            data=r.data.resolve(source, langs[0]),
            skip=(r.data.identify_rows or 0) if held_out else 0,
            n_pairs=r.data.evaluate_rows,
            n_qa=ev.n_qa if "qa" in metrics else 0,
            n_gen=ev.n_gen if "generation" in metrics else 0,
            **({} if "generation" in metrics else {"n_langid": 0}),
            dtype=r.model.dtype,
            device=r.model.device,
            revision=r.model.revision,
        )
        report = evaluate(settings, warn=self.warn, progress=None if self.quiet else self.log)
        write_report(report, report_dir, overwrite=True)
        update_card(report, edit_dir)
        return {"headline": report.data.get("headline")}

    def _edit_under_test(self, edit: EditStep, edit_dir: Path) -> dict[str, Any]:
        positions = self.recipe.evaluate.positions
        if positions == "all":
            return {"edited": str(edit_dir)}
        return {
            "neurons": str(self._neuron_file(edit)),
            "op": edit.op,
            "factor": edit.factor,
            "top_k": edit.top_k,
            "layers": _layer_spec(edit.layers),
            "positions": positions,
        }

    def _headline(self, name: str, report_dir: Path) -> list[dict[str, Any]]:
        path = report_dir / "report.json"
        if not path.is_file():
            return []
        rows = json.loads(path.read_text(encoding="utf-8")).get("headline") or []
        return [{"edit": name, **row} for row in rows]

    def _push(self) -> None:
        from tnedit.hub import PushSettings, push_checkpoint

        push = self.recipe.push
        name = push.edit or self.recipe.edits[0].name
        directory = self.out / "edits" / name
        start = time.perf_counter()
        result = push_checkpoint(
            PushSettings(dir=str(directory), repo=str(push.repo), private=push.private), progress=not self.quiet
        )
        self.steps.append(
            StepResult(
                "push", name, str(push.repo), False, time.perf_counter() - start, {"url": getattr(result, "url", None)}
            )
        )

"""Golden checks: tnedit as it is now behaves exactly like tnedit at the pinned baseline commit.

An equivalence oracle with no expected value written down: every case runs once on the baseline (the
commit in ``tests/support/golden_baseline.txt``, extracted with ``git archive``) and once on the working tree,
and the two must agree:

- identify (tiny llama, tiny gemma3_text with its (1+w) norms; transfer ``--type both``, LAPE, random
  controls): the same neurons in the same order, scores within 1e-7, the same model and method blocks, the
  same score tensors;
- apply (tiny llama float32, bfloat16 and sharded, tiny gpt2 with Conv1D rows; zero and scale): weight files,
  revert file and every other file byte-identical, tnedit.json equal key by key but ``created``,
  ``command`` and ``versions``; revert of each output byte-identical;
- evaluate (baked and hook, with a random control): every number of report.json (1e-9 relative), report.md
  but its runtime line;
- bad input: the same exit code, stdout and stderr for ~55 refused invocations of every verb;
- Gemma-3-270M (``real``, ``slow``): identify, apply and evaluate as above.

The harness is ``tests/support/golden.py`` (both sides run identically, one subprocess each, in parallel).
To pin a new baseline, write ``git rev-parse HEAD`` into ``tests/support/golden_baseline.txt`` (only when a
behaviour change is deliberate, and say so in the commit). To see the checks fail, point the current side at an
altered copy: ``TNEDIT_GOLDEN_CURRENT=/tmp/x pytest tests/integration/test_golden.py`` runs ``/tmp/x/tnedit``.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.golden import (
    Side,
    Step,
    byte_differences,
    current_package_root,
    file_listing,
    json_differences,
    lines_without,
    materialise_baseline,
    run_sides,
    tnedit_lines,
    without_intended_additions,
)
from tests.support.models import real_model_dir
from tests.support.paths import TATOEBA
from tests.support.tiny import load_tiny, make_tiny

TATOEBA_EN_JA = TATOEBA / "en-ja.train.tsv"

IDENTIFY_ROWS = 24  # identify reads rows 0-23 of data.tsv; evaluate the held-out rows after them
DATA_ROWS = 40
SCORE_TOLERANCE = 1e-7
REPORT_TOLERANCE = 1e-9
TINY_TIMEOUT_S = 600
REAL_TIMEOUT_S = 600

Q = ("--quiet",)
CPU = ("--device", "cpu")
SMALL_EVALUATION = ("--n-pairs", "8", "--n-qa", "2", "--n-gen", "1", "--n-langid", "2", "--max-new-tokens", "4",
                    "--batch-size", "4", "--skip", str(IDENTIFY_ROWS), "--data", "data.tsv")

# Fields that legitimately differ between two runs of the same code.
ADDED_EXTRA = "massive"  # the neuron-set method extra the baseline predates (identify's massive-activation marking)
# 0.3: the headline's alignment margin, the selectivity rows, the output-language detector, the lm-eval options
REPORT_ADDED = ("mid_margin", "selectivity", "detector", "langid", "lm_eval", "lm_eval_include", "lm_eval_limit",
                "lm_eval_fewshot", "lm_eval_batch_size", "no_cache")
NEURONS_IGNORED = ("tnedit_version", ADDED_EXTRA)
PROVENANCE_IGNORED = ("created", "command", "versions", "tnedit_version", ADDED_EXTRA)
REPORT_IGNORED = ("created", "versions", "runtime", "provenance_created", "tnedit_version", ADDED_EXTRA,
                  *REPORT_ADDED)
# 0.3 says that a set whose neurons carry their own factors is scaled by them; the baseline's card named only the
# operation's factor or "zeroed" (the hand-made sets of the scale steps give some neurons factors of their own).
OWN_FACTORS = re.compile(r"scaled by their own factors \([^)]*\)")


def baseline_edit_phrase(provenance: dict) -> str:
    edit = provenance["edit"]
    return "zeroed" if edit["op"] == "zero" else f"scaled by {edit['factor']:g}"
REPORT_MD_TIMING = re.compile(r"^- runtime: ")
CARD_DATES_AND_VERSIONS = re.compile(r"\d{4}-\d{2}-\d{2}|tnedit[ =v]+\d+\.\d+")

TINY_IDENTIFY = {"llama": "models/llama", "gemma3_text": "models/gemma3_text"}
LLAMA_TYPE1 = "out/identify-llama/neurons-ja-type1.json"
LLAMA_TYPE2 = "out/identify-llama/neurons-ja-type2.json"
M = "models/llama"
EDITED = "out/apply-llama-float32-zero"  # written by an apply step, which runs before the error cases
SCORES = "out/identify-llama/scores-ja.safetensors"

APPLY_CASES: dict[str, tuple[str, ...]] = {
    "llama-float32-zero": ("models/llama", LLAMA_TYPE1, "--op", "zero"),
    "llama-float32-scale": ("models/llama", LLAMA_TYPE1, "--op", "scale", "--factor", "0.5"),
    "llama-bfloat16-zero": ("models/llama-bf16", "--neurons", "0:1,1:5,2:63,3:0"),
    "llama-bfloat16-scale": ("models/llama-bf16", "--neurons", "0:1,1:5:0.25,2:63,3:0", "--op", "scale",
                             "--factor", "0.5"),
    "llama-sharded-zero": ("models/llama-sharded", LLAMA_TYPE2, "--top-k", "10"),
    "llama-sharded-scale": ("models/llama-sharded", LLAMA_TYPE1, "--op", "scale", "--factor", "0.5",
                            "--layers", "0-1"),
    "gpt2-zero": ("models/gpt2", "--neurons", "0:3,1:7,3:60"),
    "gpt2-scale": ("models/gpt2", "--neurons", "0:3,1:7:2,3:60", "--op", "scale", "--factor", "0.5"),
}

CONTROL_CASES: dict[str, tuple[str, ...]] = {
    "seed7": ("--like", LLAMA_TYPE1, "--seed", "7", "-o", "out/control-seed7.json"),
    "seed7-match-layers": ("--like", LLAMA_TYPE1, "--seed", "7", "--match-layers", "-o", "out/control-match.json"),
}

EVALUATE_CASES: dict[str, tuple[str, ...]] = {
    "baked": ("models/llama", EDITED),
    "hook-last": ("models/llama", "--neurons", LLAMA_TYPE1, "--positions", "last"),
}

_ID = ("--data", "data.tsv", "--lang", "ja", *Q, *CPU)
# Bad input of every verb, run from the side's root with the inputs of _write_bad_inputs (after the steps above).
ERROR_CASES: dict[str, tuple[str, ...]] = {
    "identify: model directory missing": ("identify", "err/no-model", *_ID, "-o", "out/e"),
    "identify: --data missing": ("identify", M, "--data", "err/gone.tsv", "--lang", "ja", "-o", "out/e", *Q),
    "identify: --data without a header": ("identify", M, "--data", "err/no-header.tsv", "--lang", "ja", "-o",
                                          "out/e", *Q),
    "identify: --lang not in the data": ("identify", M, "--data", "data.tsv", "--lang", "xx", "-o", "out/e", *Q),
    "identify: -k 0": ("identify", M, *_ID, "-k", "0", "-o", "out/e"),
    "identify: --type 3": ("identify", M, *_ID, "--type", "3", "-o", "out/e"),
    "identify: --like without --control": ("identify", M, *_ID, "--like", "err/neurons.json", "-o", "out/e"),
    "identify: -o inside the model": ("identify", M, *_ID, "-o", "models/llama/out"),
    "identify: -o an existing file": ("identify", M, *_ID, "-o", "data.tsv"),
    "identify: --layers out of range": ("identify", M, *_ID, "--layers", "0-9", "-o", "out/e"),
    "identify --control: without --like": ("identify", M, "--control", "random", "-o", "out/c.json"),
    "identify --control: --like malformed": ("identify", M, "--control", "random", "--like", "err/broken.json",
                                             "-o", "out/c.json"),
    "identify --method lape: one language": ("identify", M, "--method", "lape", "--langs", "ja", "--data",
                                             "data.tsv", "-o", "out/e", *Q, *CPU),
    "identify --method lape: -k": ("identify", M, "--method", "lape", "--langs", "en,ja", "-k", "5", "--data",
                                   "data.tsv", "-o", "out/e", *Q),
    "select: scores file missing": ("select", "err/gone.safetensors", "-o", "out/s.json"),
    "select: not safetensors": ("select", "err/garbage.safetensors", "-o", "out/s.json"),
    "select: a model's weights": ("select", "models/llama/model.safetensors", "-o", "out/s.json"),
    "select: -k 0": ("select", SCORES, "-k", "0", "-o", "out/s.json"),
    "select: --layers out of range": ("select", SCORES, "--layers", "7", "-o", "out/s.json"),
    "select: -o the scores file": ("select", SCORES, "-o", SCORES, "--overwrite"),
    "compare: A malformed": ("compare", "err/broken.json", "err/neurons.json", *Q),
    "compare: B missing": ("compare", "err/neurons.json", "err/gone.json"),
    "inspect: wrong format": ("inspect", "err/wrong-format.json"),
    "inspect: --top -1": ("inspect", "err/neurons.json", "--top", "-1"),
    "inspect: missing file": ("inspect", "err/gone.json"),
    "inspect: neuron without an index": ("inspect", "err/no-index.json"),
    "apply: index shard ../x": ("apply", "err/escape", "--neurons", "0:1", "-o", "out/a", *Q),
    "apply: no neurons": ("apply", M, "-o", "out/a", *Q),
    "apply: NEURONS_FILE and --neurons": ("apply", M, "err/neurons.json", "--neurons", "0:1", "-o", "out/a", *Q),
    "apply: neuron index out of range": ("apply", M, "--neurons", "0:999", "-o", "out/a", *Q),
    "apply: inline list malformed": ("apply", M, "--neurons", "0:x", "-o", "out/a", *Q),
    "apply: --op scale without --factor": ("apply", M, "--neurons", "0:1", "--op", "scale", "-o", "out/a", *Q),
    "apply: --factor 1e39": ("apply", M, "--neurons", "0:1", "--op", "scale", "--factor", "1e39", "-o", "out/a"),
    "apply: -o the source": ("apply", M, "--neurons", "0:1", "-o", M, "--overwrite", *Q),
    "apply: -o the cwd": ("apply", M, "--neurons", "0:1", "-o", ".", "--overwrite", *Q),
    "apply: -o holds the neurons file": ("apply", M, "err/held/neurons.json", "-o", "err/held", "--overwrite", *Q),
    "apply: set of another model": ("apply", M, "err/other-model.json", "-o", "out/a", *Q),
    "apply: missing -o": ("apply", M, "--neurons", "0:1"),
    "revert: not an edited checkpoint": ("revert", M, "-o", "out/r", *Q),
    "revert: provenance format wrong": ("revert", "err/bad-provenance", "-o", "out/r", *Q),
    "revert: -o inside EDITED": ("revert", EDITED, "-o", f"{EDITED}/back", *Q),
    "revert: EDITED missing": ("revert", "err/gone", "-o", "out/r", *Q),
    "evaluate: neither EDITED nor --neurons": ("evaluate", M, "--lang", "ja", "-o", "out/v", *Q),
    "evaluate: hook option with a baked EDITED": ("evaluate", M, "err/bad-provenance", "--positions", "last",
                                                  "--lang", "ja", "-o", "out/v", *Q),
    "evaluate: -o inside ORIGINAL": ("evaluate", M, "--neurons", "0:1", "--lang", "ja", "-o", "models/llama/r", *Q),
    "evaluate: --neurons malformed": ("evaluate", M, "--neurons", "err/broken.json", "--lang", "ja", "-o", "out/v",
                                      *Q, *CPU),
    "evaluate: no --lang": ("evaluate", M, "--neurons", "0:1", "-o", "out/v"),
    "evaluate: EDITED made from another model": ("evaluate", M, "out/apply-gpt2-zero", "--lang", "ja", "-o", "out/v",
                                                 *Q, *CPU),
    "push: DIR not written by apply": ("push", M, "someone/model", *Q),
    "push: DIR missing": ("push", "err/gone", "someone/model", *Q),
    "run: recipe missing": ("run", "err/gone.yaml"),
    "run: misspelt key": ("run", "err/misspelt.yaml", *Q),
    "run: not YAML": ("run", "err/not-yaml.yaml", *Q),
    "run: --set unknown key": ("run", "err/recipe.yaml", "--set", "identify.nope=1", *Q),
    "tnedit: unknown verb": ("frobnicate",),
    "apply: unknown option": ("apply", "--frobnicate"),  # far from the options added since: the same hint
}

RECIPE = """\
model: {name: ../models/llama, dtype: float32, device: cpu}
languages: [ja]
data: {source: ../data.tsv, identify_rows: 8, evaluate_rows: 4}
identify: {type: 1, k: 4, batch_size: 4}
edits:
  - {name: ja-t1, neurons: "ja:1"}
output: ../out/recipe
"""


# --- the two sides ---------------------------------------------------------------------------------


@dataclass
class Pair:
    baseline: Side
    current: Side

    def files(self, relative: str) -> tuple[Path, Path]:
        return self.baseline.root / relative, self.current.root / relative

    def succeeded(self, step: str) -> None:
        """Both sides ran ``step`` without error and said the same (tnedit's own stderr lines)."""
        for side in (self.baseline, self.current):
            outcome = side.outcome(step)
            assert outcome.code == 0, f"{step} failed on the {side.name} side:\n{outcome.stderr[-3000:]}"
        said = [tnedit_lines(side.normalised(side.outcome(step).stderr)) for side in (self.baseline, self.current)]
        assert said[0] == said[1], f"{step}: tnedit's messages differ"


def _sides(root: Path, template: Path, baseline_package: Path, prefix: str) -> Pair:
    """Two work directories with the same inputs (copies of ``template``)."""
    sides = []
    for name, package in (("baseline", baseline_package), ("current", current_package_root())):
        work = root / f"{prefix}-{name}"
        shutil.copytree(template, work, symlinks=True)
        sides.append(Side(name=name, package=package, root=work))
    return Pair(*sides)


@pytest.fixture(scope="session")
def baseline_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialise_baseline(tmp_path_factory.mktemp("golden-baseline"))


def _corpus_rows(baseline_package: Path, count: int) -> list[tuple[str, str]]:
    """en–ja rows of the built-in corpus (read from the baseline's file: no import of the code under test)."""
    with open(baseline_package / "tnedit" / "data" / "corpus.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(row["en"], row["ja"]) for row in rows[:count]]


def _write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("en\tja\n" + "".join(f"{en}\t{ja}\n" for en, ja in rows), encoding="utf-8")


def _write_models(models: Path) -> None:
    llama = make_tiny("llama", models, subdir="llama")
    make_tiny("llama", models, dtype="bfloat16", subdir="llama-bf16")
    make_tiny("gemma3_text", models, subdir="gemma3_text")
    make_tiny("gpt2", models, subdir="gpt2")
    model, tokenizer = load_tiny(llama)
    model.save_pretrained(models / "llama-sharded", max_shard_size="20KB")
    tokenizer.save_pretrained(models / "llama-sharded")


def _neurons_file(path: Path, model: dict | None = None) -> None:
    body = {"format": "tnedit.neurons/1", "neurons": [{"layer": 0, "index": 1}, {"layer": 1, "index": 2}]}
    if model is not None:
        body["model"] = model
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body), encoding="utf-8")


def _write_bad_inputs(root: Path) -> None:
    err = root / "err"
    err.mkdir()
    (err / "no-header.tsv").write_text("hello world\nfoo bar\n", encoding="utf-8")
    (err / "broken.json").write_text('{"format": "tnedit.neurons/1", "neurons": [', encoding="utf-8")
    (err / "wrong-format.json").write_text('{"format": "tnedit.neurons/9", "neurons": []}', encoding="utf-8")
    (err / "no-index.json").write_text('{"format": "tnedit.neurons/1", "neurons": [{"layer": 0}]}', encoding="utf-8")
    (err / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    _neurons_file(err / "neurons.json")
    _neurons_file(err / "held" / "neurons.json")
    _neurons_file(err / "other-model.json", {"name_or_path": "other", "model_type": "llama", "num_layers": 4,
                                              "intermediate_size": 64, "fingerprint": "fp2:" + "0" * 32,
                                              "revision": None, "hidden_size": 32})
    escape = Path(shutil.copytree(root / "models" / "llama-sharded", err / "escape"))
    index_path = escape / "model.safetensors.index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    shard = index["weight_map"]["model.layers.0.mlp.down_proj.weight"]
    shutil.move(escape / shard, err / "outside.safetensors")
    index["weight_map"] = {k: ("../outside.safetensors" if v == shard else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index), encoding="utf-8")
    provenance = Path(shutil.copytree(root / "models" / "llama", err / "bad-provenance"))
    (provenance / "tnedit.json").write_text('{"format": "tnedit.provenance/9"}', encoding="utf-8")
    (err / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    (err / "misspelt.yaml").write_text(RECIPE + "identfy: {k: 3}\n", encoding="utf-8")
    (err / "not-yaml.yaml").write_text("model: [\n", encoding="utf-8")


def _tiny_steps() -> list[Step]:
    steps = [Step(f"identify-{name}", ("identify", path, "--data", "data.tsv", "--limit", str(IDENTIFY_ROWS),
                                       "--lang", "ja", "--type", "both", "-k", "20", "--batch-size", "8",
                                       "-o", f"out/identify-{name}", *Q, *CPU))
             for name, path in TINY_IDENTIFY.items()]
    steps.append(Step("identify-lape", ("identify", M, "--method", "lape", "--langs", "en,ja", "--data", "data.tsv",
                                        "--limit", str(IDENTIFY_ROWS), "--batch-size", "8", "-o", "out/lape",
                                        *Q, *CPU)))
    steps += [Step(f"control-{name}", ("identify", M, "--control", "random", *args))
              for name, args in CONTROL_CASES.items()]
    steps += [Step(f"apply-{name}", ("apply", *args, "-o", f"out/apply-{name}", *Q))
              for name, args in APPLY_CASES.items()]
    steps += [Step(f"revert-{name}", ("revert", f"out/apply-{name}", "-o", f"out/revert-{name}", *Q))
              for name in APPLY_CASES]
    steps += [Step(f"evaluate-{name}", ("evaluate", *args, "--lang", "ja", "--control", "random", *SMALL_EVALUATION,
                                        "-o", f"out/evaluate-{name}", *Q, *CPU))
              for name, args in EVALUATE_CASES.items()]
    steps += [Step(f"error: {name}", args) for name, args in ERROR_CASES.items()]
    return steps


@pytest.fixture(scope="session")
def tiny(baseline_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """Every tiny case, run once per side (the sides in parallel)."""
    root = tmp_path_factory.mktemp("golden-tiny")
    template = root / "inputs"
    template.mkdir()
    _write_models(template / "models")
    _write_tsv(template / "data.tsv", _corpus_rows(baseline_package, DATA_ROWS))
    _write_bad_inputs(template)
    pair = _sides(root, template, baseline_package, "side")
    run_sides([pair.baseline, pair.current], _tiny_steps(), timeout=TINY_TIMEOUT_S)
    return pair


# --- comparisons -----------------------------------------------------------------------------------


def _json(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache  # the steps all ran before any assertion: read the side's neuron sets once
def _baseline_digests(root: Path) -> dict[str, str]:
    """The SHA-256 of each neuron set the current side wrote → that of the same set without ``ADDED_EXTRA``.

    A control's ``like_sha256``, a provenance's and a report's neuron-set digest name a set whose method
    extra has one key more than the baseline's; a current digest stands for the baseline's only if the set
    minus that key hashes to it.
    """
    from dataclasses import replace

    from tnedit.errors import TneditError
    from tnedit.formats.neurons import load_neurons

    out: dict[str, str] = {}
    for path in sorted(root.rglob("*.json")):
        try:
            neuron_set = load_neurons(path)
        except (TneditError, ValueError, OSError):
            continue  # not a neuron set
        if neuron_set.method is not None and ADDED_EXTRA in neuron_set.method.extra:
            extra = {k: v for k, v in neuron_set.method.extra.items() if k != ADDED_EXTRA}
            out[neuron_set.sha256()] = replace(neuron_set, method=replace(neuron_set.method, extra=extra)).sha256()
    return out


def _as_baseline(value: object, digests: dict[str, str]) -> object:
    """``value`` with each current neuron-set digest replaced by its baseline equivalent (nothing else)."""
    if isinstance(value, dict):
        return {k: _as_baseline(v, digests) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_baseline(v, digests) for v in value]
    return digests.get(value, value) if isinstance(value, str) else value


def _current_json(pair: Pair, path: Path) -> object:
    return _as_baseline(_json(path), _baseline_digests(pair.current.root))


def assert_same_neuron_set(pair: Pair, relative: str) -> None:
    """Same neurons in the same order, scores within 1e-7, every other field equal."""
    base, current = _json(pair.files(relative)[0]), _current_json(pair, pair.files(relative)[1])
    keys = [[(n["layer"], n["index"]) for n in s["neurons"]] for s in (base, current)]
    assert keys[0] == keys[1], f"{relative}: the neurons or their order differ"
    differences = json_differences(base, current, ignore=NEURONS_IGNORED, abs_=SCORE_TOLERANCE)
    assert not differences, f"{relative}:\n" + "\n".join(differences[:20])


def assert_same_scores_file(pair: Pair, relative: str) -> None:
    import torch
    from safetensors import safe_open

    opened = [safe_open(str(p), "pt") for p in pair.files(relative)]
    metadata = [{k: _maybe_json(v) for k, v in f.metadata().items()} for f in opened]
    differences = json_differences(*metadata, ignore=NEURONS_IGNORED)
    assert not differences, f"{relative} metadata:\n" + "\n".join(differences)
    added = {"mean_abs_activation"}  # the tensor the baseline predates: only the current side has it
    assert added.isdisjoint(opened[0].keys()) and added <= set(opened[1].keys()), f"{relative}: {added} expected"
    assert sorted(opened[0].keys()) == sorted(set(opened[1].keys()) - added), f"{relative}: tensor names differ"
    for name in opened[0].keys():
        a, b = (f.get_tensor(name) for f in opened)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{relative}:{name}: dtype or shape differ"
        assert torch.allclose(a, b, rtol=0, atol=SCORE_TOLERANCE, equal_nan=True), f"{relative}:{name} differs"


def _maybe_json(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return value


def assert_same_checkpoint(pair: Pair, relative: str) -> None:
    """Every file byte-identical but tnedit.json (key by key) and README.md (dates and versions aside)."""
    base, current = pair.files(relative)
    names = file_listing(base)
    assert names == file_listing(current), f"{relative}: the files differ"
    special = {"tnedit.json", "README.md"}
    differing = byte_differences(base, current, [n for n in names if n not in special])
    assert not differing, f"{relative}: bytes differ in {differing}"
    if "tnedit.json" in names:
        differences = json_differences(_json(base / "tnedit.json"), _current_json(pair, current / "tnedit.json"),
                                       ignore=PROVENANCE_IGNORED)
        assert not differences, f"{relative}/tnedit.json:\n" + "\n".join(differences)
    if "README.md" in names:
        texts = [(d / "README.md").read_text(encoding="utf-8") for d in (base, current)]
        phrase = baseline_edit_phrase(_json(current / "tnedit.json"))
        texts[1] = OWN_FACTORS.sub(phrase, without_intended_additions(texts[1]))
        cards = [lines_without(text, CARD_DATES_AND_VERSIONS) for text in texts]
        assert cards[0] == cards[1], f"{relative}/README.md differs"


def assert_same_report(pair: Pair, relative: str) -> None:
    base, current = pair.files(relative)
    assert file_listing(base) == file_listing(current), f"{relative}: the files differ"
    differences = json_differences(_json(base / "report.json"), _current_json(pair, current / "report.json"),
                                   ignore=REPORT_IGNORED, rel=REPORT_TOLERANCE, abs_=1e-12)
    assert not differences, f"{relative}/report.json:\n" + "\n".join(differences[:30])
    texts = [(d / "report.md").read_text(encoding="utf-8") for d in (base, current)]
    for digest, baseline_digest in _baseline_digests(pair.current.root).items():
        texts[1] = texts[1].replace(digest, baseline_digest)
    texts[1] = without_intended_additions(texts[1])
    markdown = [lines_without(text, REPORT_MD_TIMING) for text in texts]
    assert markdown[0] == markdown[1], f"{relative}/report.md differs"


# --- 1. identify -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(TINY_IDENTIFY))
def test_identify_gives_the_same_neuron_sets_and_scores(tiny: Pair, model: str) -> None:
    tiny.succeeded(f"identify-{model}")
    out = f"out/identify-{model}"
    assert file_listing(tiny.baseline.root / out) == file_listing(tiny.current.root / out)
    for neuron_type in (1, 2):
        assert_same_neuron_set(tiny, f"{out}/neurons-ja-type{neuron_type}.json")
    assert_same_scores_file(tiny, f"{out}/scores-ja.safetensors")


def test_lape_gives_the_same_neuron_sets(tiny: Pair) -> None:
    tiny.succeeded("identify-lape")
    names = file_listing(tiny.baseline.root / "out/lape")
    assert names and names == file_listing(tiny.current.root / "out/lape")
    for name in names:
        assert_same_neuron_set(tiny, f"out/lape/{name}")


@pytest.mark.parametrize("case", list(CONTROL_CASES))
def test_random_control_gives_the_same_neurons(tiny: Pair, case: str) -> None:
    tiny.succeeded(f"control-{case}")
    assert_same_neuron_set(tiny, CONTROL_CASES[case][-1])


# --- 2. apply and revert ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(APPLY_CASES))
def test_apply_writes_the_same_checkpoint(tiny: Pair, case: str) -> None:
    tiny.succeeded(f"apply-{case}")
    assert (tiny.baseline.root / f"out/apply-{case}" / "tnedit_revert.safetensors").is_file()
    assert_same_checkpoint(tiny, f"out/apply-{case}")


@pytest.mark.parametrize("case", list(APPLY_CASES))
def test_revert_writes_the_same_files(tiny: Pair, case: str) -> None:
    tiny.succeeded(f"revert-{case}")
    base, current = tiny.files(f"out/revert-{case}")
    names = file_listing(base)
    assert names == file_listing(current), f"revert-{case}: the files differ"
    assert not byte_differences(base, current, names)


# --- 3. evaluate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_reports_the_same_numbers(tiny: Pair, case: str) -> None:
    tiny.succeeded(f"evaluate-{case}")
    assert_same_report(tiny, f"out/evaluate-{case}")


# --- 4. bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_gives_the_same_message_and_exit_code(tiny: Pair, case: str) -> None:
    base, current = (side.outcome(f"error: {case}") for side in (tiny.baseline, tiny.current))
    assert base.code != 0, f"{case}: the baseline accepted it (not a bad-input case): {base.stderr[-500:]}"
    assert current.code == base.code, f"{case}: exit {current.code}, the baseline's was {base.code}"
    assert tiny.current.normalised(current.stderr) == tiny.baseline.normalised(base.stderr)
    assert tiny.current.normalised(current.stdout) == tiny.baseline.normalised(base.stdout)


# --- 5. files written before the move -------------------------------------------------------------


def test_files_the_baseline_wrote_load_with_the_current_readers(tiny: Pair) -> None:
    """Old neurons, scores, provenance and report files load unchanged and round-trip key for key."""
    from tnedit.formats.neurons import load_neurons
    from tnedit.formats.provenance import NOT_A_CHECKPOINT, Provenance, read_provenance
    from tnedit.formats.report import load_report
    from tnedit.formats.scores import ScoresFile

    out = tiny.baseline.root / "out"
    neuron_files = sorted(out.glob("identify-*/neurons-*.json")) + sorted(out.glob("control-*.json"))
    neuron_files += sorted(out.glob("lape/*.json"))
    assert len(neuron_files) >= 6
    for path in neuron_files:
        assert load_neurons(path).to_dict() == _json(path), path
    scores = sorted(out.glob("identify-*/scores-*.safetensors"))
    assert scores
    for path in scores:
        assert ScoresFile.load(path).model.num_layers > 0, path
    edited = sorted(out.glob("apply-*"))
    assert len(edited) == len(APPLY_CASES)
    for directory in edited:
        recorded = _json(directory / "tnedit.json")
        assert Provenance.from_dict(recorded, directory).to_dict() == recorded, directory
        assert read_provenance(directory, complete=True, missing=NOT_A_CHECKPOINT).to_dict() == recorded
    reports = sorted(out.glob("evaluate-*/report.json"))
    assert len(reports) == len(EVALUATE_CASES)
    for path in reports:
        assert load_report(path).to_dict() == _json(path), path


@pytest.mark.parametrize("case", ["llama-float32-scale", "llama-sharded-zero", "gpt2-scale"])
def test_current_revert_restores_a_checkpoint_the_baseline_wrote(tiny: Pair, case: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.hostile import run_cli

    tiny.succeeded(f"revert-{case}")
    reverted = tmp_path / "reverted"
    code, _, err = run_cli(["revert", str(tiny.baseline.root / f"out/apply-{case}"), "-o", str(reverted), *Q],
                           capsys)
    assert code == 0, err
    expected = tiny.baseline.root / f"out/revert-{case}"
    names = file_listing(expected)
    assert file_listing(reverted) == names
    assert not byte_differences(expected, reverted, names)


# --- 6. Gemma-3-270M -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gemma(baseline_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """identify → apply → evaluate on the real model, once per side; the ~1 GB checkpoints go afterwards."""
    model = str(real_model_dir("gemma3-270m"))
    if not TATOEBA_EN_JA.is_file():
        pytest.skip(f"shared Tatoeba data not found at {TATOEBA_EN_JA}")
    root = tmp_path_factory.mktemp("golden-gemma")
    template = root / "inputs"
    template.mkdir()
    lines = TATOEBA_EN_JA.read_text(encoding="utf-8").splitlines()[: 1 + 48]
    (template / "data.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    steps = [
        Step("identify", ("identify", model, "--data", "data.tsv", "--limit", "40", "--lang", "ja", "--type", "1",
                          "-k", "50", "--batch-size", "8", "-o", "out/identify", *Q, *CPU)),
        Step("apply", ("apply", model, "out/identify/neurons-ja-type1.json", "-o", "out/apply", *Q)),
        Step("evaluate", ("evaluate", model, "out/apply", "--lang", "ja", "--data", "data.tsv", "--skip", "40",
                          "--n-pairs", "8", "--n-qa", "0", "--n-gen", "0", "--n-langid", "0", "--batch-size", "8",
                          "-o", "out/evaluate", *Q, *CPU)),
    ]
    pair = _sides(root, template, baseline_package, "side")
    try:
        run_sides([pair.baseline, pair.current], steps, timeout=REAL_TIMEOUT_S)
        yield pair
    finally:
        for side in (pair.baseline, pair.current):
            shutil.rmtree(side.root, ignore_errors=True)


@pytest.mark.real
@pytest.mark.slow
def test_gemma_identify_gives_the_same_neuron_set(gemma: Pair) -> None:
    gemma.succeeded("identify")
    assert_same_neuron_set(gemma, "out/identify/neurons-ja-type1.json")
    assert_same_scores_file(gemma, "out/identify/scores-ja.safetensors")


@pytest.mark.real
@pytest.mark.slow
def test_gemma_apply_writes_the_same_checkpoint(gemma: Pair) -> None:
    gemma.succeeded("apply")
    assert_same_checkpoint(gemma, "out/apply")


@pytest.mark.real
@pytest.mark.slow
def test_gemma_evaluate_reports_the_same_numbers(gemma: Pair) -> None:
    gemma.succeeded("evaluate")
    assert_same_report(gemma, "out/evaluate")

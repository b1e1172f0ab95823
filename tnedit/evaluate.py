"""Original-versus-edited evaluation: settings, the plan of conditions, summaries and report writing.

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

The batched passes and generation live in :mod:`tnedit.conditions`, metrics in :mod:`tnedit.metrics`,
tables, plots and the schema in :mod:`tnedit.report`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from tnedit import metrics as M
from tnedit import package_versions
from tnedit import report as R
from tnedit.checkpoint import PROVENANCE_NAME, atomic_directory, read_config, resolve_source, write_json
from tnedit.conditions import Accumulator, Condition, forward, run_generation
from tnedit.errors import CheckpointError, InputError
from tnedit.formats.neurons import Neuron, NeuronSet, format_layers, parse_layers, read_neuron_argument
from tnedit.formats.outputs import check_output_dir, require_writable

REPORT_FORMAT = R.REPORT_FORMAT
validate_report = R.validate_report
CARD_SECTION = "evaluation"

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "added_tokens.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
)


@dataclass
class EvaluateSettings:
    """Everything one evaluation needs. ``edited`` (a baked directory) or ``neurons`` (a hook) is required."""

    original: str
    languages: list[str]
    edited: str | None = None
    neurons: str | NeuronSet | None = None  # a neurons file, an inline list "3:17,3:99" or a NeuronSet
    op: str = "zero"
    factor: float | None = None
    positions: str = "all"  # hook edits only: all | last | prompt
    top_k: int | None = None
    layers: str | list[int] | None = None  # hook edits only: keep neurons in these layers ("0-11", "0.0:0.5")
    control: str | None = None  # None or "random"
    seed: int = 42
    data: str | None = None  # None = the built-in corpus
    skip: int = 0
    n_pairs: int = 200
    qa: str | None = None  # None = the built-in QA set
    n_qa: int = 50
    qa_shots: int = 2
    qa_max_new_tokens: int = 10
    n_gen: int = 3
    n_langid: int = 16
    max_new_tokens: int = 20
    knn_k: int = 10
    pca_layers: int = 4
    kl_top_k: int = 1024
    batch_size: int = 32
    gen_batch_size: int = 64
    dtype: str = "auto"
    device: str = "auto"
    revision: str | None = None
    force: bool = False
    english: str = "en"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.neurons, NeuronSet):
            out["neurons"] = f"<in-memory NeuronSet sha256:{self.neurons.sha256()}>"
        out["languages"] = list(self.languages)
        return out


@dataclass
class EvaluationReport:
    """The machine-readable result (``data``, a ``tnedit.report/1`` dict) and its renderings."""

    data: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def headline(self) -> R.Table:
        return R.headline_table(self.data)

    def console(self) -> str:
        return R.render_console([self.headline()])

    def markdown(self, plots: Sequence[str] = ()) -> str:
        return R.render_report_markdown(self.data, plots)

    def card_markdown(self, plot_prefix: str | None = None) -> str:
        return card_markdown(self.data, plot_prefix)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, ensure_ascii=False) + "\n"


# --- inputs -------------------------------------------------------------------------------------


def _check_settings(settings: EvaluateSettings) -> EvaluateSettings:
    """Validate and normalise a copy of ``settings``."""
    s = replace(settings, languages=list(settings.languages))
    langs = [lang.strip() for lang in s.languages if lang and lang.strip()]
    langs = list(dict.fromkeys(langs))
    if not langs:
        raise InputError("--lang: give at least one target language (e.g. --lang ja)")
    if s.english in langs:
        raise InputError(f"--lang: '{s.english}' is the shared language; give the L2 language(s) to compare with it")
    s.languages = langs
    if (s.edited is None) == (s.neurons is None):
        raise InputError("give either EDITED_DIR (a baked checkpoint) or --neurons FILE (a runtime hook), exactly one")
    if s.positions not in ("all", "last", "prompt"):
        raise InputError(f"--positions must be all, last or prompt, got {s.positions!r}")
    if s.edited is not None and s.positions != "all":
        raise InputError("--positions applies to hook edits (--neurons); a baked checkpoint edits every position")
    if s.control in ("none", ""):
        s.control = None
    if s.control not in (None, "random"):
        raise InputError(f"--control must be 'random' or 'none', got {s.control!r}")
    for name in ("batch_size", "gen_batch_size", "knn_k", "kl_top_k", "pca_layers"):
        if getattr(s, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}")
    for name in ("skip", "n_qa", "n_gen", "n_langid", "qa_shots", "max_new_tokens", "qa_max_new_tokens"):
        if getattr(s, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must not be negative, got {getattr(s, name)}")
    if s.n_pairs < 2:
        raise InputError("--n-pairs must be at least 2 (non-parallel pairs need a shuffle)")
    return s


def _sha256_text(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def load_pairs(s: EvaluateSettings) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Rows ``skip .. skip + n_pairs`` of the parallel corpus, per language (English first)."""
    from tnedit.corpus import load_corpus

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
        "sha256": _sha256_text([t for lang in langs for t in columns[lang]]),
        "corpus_sha256": getattr(corpus, "sha256", None),
        "languages": langs,
        "rows": [s.skip, s.skip + n],
        "n_pairs": n,
        "requested_pairs": s.n_pairs,
    }
    return columns, info


def count_rows(s: EvaluateSettings, limit: int) -> int:
    """How many rows the evaluation data has, counting up to ``limit``."""
    from tnedit.corpus import load_corpus

    return len(load_corpus(s.data, [s.english, *s.languages], limit=limit, min_rows=0))


def load_qa_sets(s: EvaluateSettings) -> tuple[dict[str, tuple[list[Any], list[Any]]], dict[str, Any] | None]:
    """Per L2 language: (few-shot examples, evaluation items)."""
    if s.n_qa == 0:
        return {}, None
    from tnedit.corpus import load_qa

    out: dict[str, tuple[list[Any], list[Any]]] = {}
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
    return out, {"source": s.qa or "built-in", "sha256": _sha256_text(texts), "n": counts, "shots": s.qa_shots}


def _spec_sha256(spec: Any) -> str:
    rows = [[n.layer, n.index, spec.factor_of(n)] for n in spec.neurons]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _refuse_unless_forced(msg: str, force: bool, warn: Callable[[str], None],
                          error: type[InputError] = InputError) -> None:
    if not force:
        raise error(msg + " (pass --force to evaluate anyway)")
    warn(msg)


def read_edited_provenance(edited: str, force: bool, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """EDITED's checked tnedit.json; None (with a warning) when it has none and ``force`` is set."""
    from tnedit.hub import read_checkpoint_provenance

    if not (Path(edited) / PROVENANCE_NAME).is_file():
        msg = f"{edited}: no {PROVENANCE_NAME}; cannot check that it was derived from the original"
        _refuse_unless_forced(msg, force, warn, CheckpointError)
        return None
    return read_checkpoint_provenance(Path(edited))


def check_edited_weights(edited: Path, prov: dict[str, Any], force: bool, warn: Callable[[str], None]) -> None:
    """EDITED must load exactly the weight files tnedit.json records, with the recorded SHA-256s."""
    from tnedit.checkpoint import open_checkpoint
    from tnedit.hub import weights_problem

    unrecorded = sorted(set(open_checkpoint(edited).weight_files) - set(prov["weights"]))
    problem = weights_problem(edited, prov)
    if problem is None and unrecorded:
        problem = f"{edited / unrecorded[0]}: weight file not recorded in {PROVENANCE_NAME} (apply did not write it)"
    if problem:
        _refuse_unless_forced(problem, force, warn, CheckpointError)


def _same_name(a: str, b: str) -> bool:
    if _same_source(a, b):
        return True
    name = Path(a).expanduser().name
    return name == Path(b).expanduser().name and name not in ("", ".")


def check_derived(original: str, original_path: Path, prov: dict[str, Any], force: bool,
                  warn: Callable[[str], None]) -> None:
    """EDITED's provenance must name ORIGINAL (by name) and match its fingerprint.

    A shape-only fingerprint of tnedit 0.1 that matches is accepted with a warning: it cannot tell
    ORIGINAL from a fine-tune of the same shapes.
    """
    from tnedit.checkpoint import open_checkpoint

    src = prov.get("source") or {}
    problems = []
    ckpt = open_checkpoint(original_path)
    recorded = src.get("fingerprint") or None
    status = ckpt.fingerprint_status(recorded)
    if status == "legacy":
        warn(f"{PROVENANCE_NAME} of EDITED_DIR records a shape-only fingerprint ({recorded}); ORIGINAL matches "
             "it by shape, which cannot tell it from another model of the same shapes")
    elif status == "different":
        problems.append(f"its source fingerprint {recorded} differs from ORIGINAL's {ckpt.fingerprint()}")
    name = str(src.get("name_or_path", ""))
    if name and not _same_name(name, original) and not _same_name(name, str(original_path)):
        problems.append(f"it was made from '{name}', not '{original}'")
    if problems:
        msg = f"EDITED_DIR is not derived from ORIGINAL per {PROVENANCE_NAME}: " + "; ".join(problems)
        _refuse_unless_forced(msg, force, warn)


def _file_hashes(path: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((path / name).read_bytes()).hexdigest()
        for name in TOKENIZER_FILES
        if (path / name).is_file()
    }


def check_tokenizers(original_path: Path, edited_path: Path, probes: Sequence[str]) -> str:
    """Refuse to compare models whose tokenizers or vocabularies differ; return how it was checked."""
    a_cfg, b_cfg = read_config(original_path), read_config(edited_path)
    vocab_a = a_cfg.get("vocab_size") or (a_cfg.get("text_config") or {}).get("vocab_size")
    vocab_b = b_cfg.get("vocab_size") or (b_cfg.get("text_config") or {}).get("vocab_size")
    if vocab_a != vocab_b:
        raise InputError(f"ORIGINAL and EDITED have different vocabularies (vocab_size {vocab_a} vs {vocab_b})")
    ha, hb = _file_hashes(original_path), _file_hashes(edited_path)
    if ha and ha == hb:
        return "tokenizer files identical (sha256)"
    from transformers import AutoTokenizer

    try:
        ta, tb = AutoTokenizer.from_pretrained(original_path), AutoTokenizer.from_pretrained(edited_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load both tokenizers to compare them ({type(exc).__name__}: {exc})") from None
    if len(ta) != len(tb):
        raise InputError(f"ORIGINAL and EDITED tokenizers differ: {len(ta)} vs {len(tb)} tokens")
    for text in probes:
        if ta(text)["input_ids"] != tb(text)["input_ids"]:
            raise InputError(f"ORIGINAL and EDITED tokenizers differ: they split {text[:40]!r} differently")
    return f"tokenizer files differ but vocabulary size and {len(probes)} probe encodings agree"


def _pca_layers(n_layers: int, count: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, min(count, n_layers))})


def _summarise(acc: Accumulator, cond: Condition, s: EvaluateSettings, n_layers: int,
               perm: np.ndarray, gen: dict[str, Any]) -> dict[str, Any]:
    en = s.english
    k = min(s.knn_k, acc.sizes[en] - 1)
    rep = {}
    for lang in s.languages:
        x, y = acc.h[en], acc.h[lang]
        rep[lang] = {
            "cos_parallel": [M.mean_pair_cosine(x[i], y[i]) for i in range(n_layers)],
            "cos_nonparallel": [M.nonparallel_cosine(x[i], y[i], perm) for i in range(n_layers)],
            "mutual_knn": [M.mutual_knn(x[i], y[i], k) for i in range(n_layers)],
            "centroid_cos": [M.centroid_cosine(x[i], y[i]) for i in range(n_layers)],
        }
    langs = [en, *s.languages]
    layers = _pca_layers(n_layers, s.pca_layers)
    pca = {"layers": layers, "languages": langs, "n_per_language": acc.sizes[en], "coords": [], "explained": []}
    centroids = {"layers": layers, "languages": langs, "matrices": []}
    for layer in layers:
        stacked = np.concatenate([acc.h[lang][layer] for lang in langs])
        coords, ratio = M.pca_2d(stacked)
        pca["coords"].append(np.round(coords, 5).tolist())
        pca["explained"].append([float(r) for r in ratio])
        centroids["matrices"].append(M.centroid_cosine_matrix([acc.h[lang][layer] for lang in langs]).tolist())
    lm_stats = {}
    for lang in langs:
        n_pos = acc.n_positions[lang]
        compared = cond.name != "original" and n_pos > 0
        lm_stats[lang] = {
            "perplexity": M.perplexity(acc.nll[lang], acc.n_tokens[lang]),
            "nll_sum": acc.nll[lang],
            "n_tokens": acc.n_tokens[lang],
            "kl": acc.kl[lang] / n_pos if compared else None,
            "top1": acc.top1[lang] / n_pos if compared else None,
            "n_positions": n_pos,
        }
    return {
        "name": cond.name,
        "source": cond.source,
        "positions": cond.positions,
        "n_neurons": cond.n_neurons,
        "kl_method": acc.kl_method,
        "representation": rep,
        "centroids": centroids,
        "pca": pca,
        "lm": lm_stats,
        "knn_k": k,
        **gen,
    }


def _headline(data: dict[str, Any], s: EvaluateSettings) -> list[dict[str, Any]]:
    mids = data["mid_layers"]
    en = s.english
    rows = []
    orig = data["conditions"]["original"]
    for name in R.conditions(data):
        c = data["conditions"][name]
        for lang in s.languages:
            rep = c["representation"][lang]
            mid = float(np.mean([rep["cos_parallel"][i] for i in mids]))
            base = float(np.mean([orig["representation"][lang]["cos_parallel"][i] for i in mids]))
            qa = c.get("qa", {}).get(lang) or {}
            rows.append({
                "condition": name,
                "lang": lang,
                "n_neurons": c["n_neurons"],
                "mid_cos": mid,
                "mid_cos_delta": mid - base,
                "mid_floor": float(np.mean([rep["cos_nonparallel"][i] for i in mids])),
                "mid_knn": float(np.mean([rep["mutual_knn"][i] for i in mids])),
                "ppl_en": c["lm"][en]["perplexity"],
                "ppl_l2": c["lm"][lang]["perplexity"],
                "kl_en": c["lm"][en]["kl"],
                "kl_l2": c["lm"][lang]["kl"],
                "top1_en": c["lm"][en]["top1"],
                "top1_l2": c["lm"][lang]["top1"],
                "qa_f1": qa.get("f1"),
                "qa_em": qa.get("em"),
                "lang_share": c["output_language"][lang]["share"],
            })
    return rows


def _edit_from_provenance(prov: dict[str, Any], where: Path) -> tuple[Any, list[int] | None]:
    from tnedit.edit import make_edit_spec

    edit = prov.get("edit") or {}
    try:
        neurons = [Neuron(int(a), int(b), factor=float(f)) for a, b, f in edit.get("neurons", [])]
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: key 'edit.neurons' must list [layer, index, factor] triples") from None
    if not neurons:
        raise CheckpointError(f"{where}: key 'edit.neurons' lists no neurons")
    op = edit.get("op", "zero")
    spec = make_edit_spec(neurons, op, edit.get("factor") if op == "scale" else None)
    method = (prov.get("neuron_set") or {}).get("method") or {}
    return spec, (method.get("layers") or None)


@dataclass
class _Plan:
    """What to run, decided before any model is loaded."""

    edited: Condition
    spec: Any  # the edited neurons (None only for a forced baked dir without tnedit.json)
    method_layers: list[int] | None
    edit_info: dict[str, Any] | None
    tokenizer_check: str | None = None


def _edit_info(source: str, spec: Any, positions: str, ns_sha256: str | None, method: Any) -> dict[str, Any]:
    return {"source": source, "op": spec.op, "factor": spec.factor, "positions": positions,
            "n_neurons": len(spec.neurons), "neuron_set_sha256": ns_sha256, "edit_sha256": _spec_sha256(spec),
            "per_layer": spec.per_layer_counts(), "method": method}


def _plan(s: EvaluateSettings, original_path: Path, texts: dict[str, list[str]],
          warn: Callable[[str], None]) -> _Plan:
    """Read the edit (hook neuron set or baked dir) and run the cheap consistency checks."""
    from tnedit.checkpoint import open_checkpoint
    from tnedit.edit import check_neuron_range, make_edit_spec

    if s.edited is not None:
        edited_path = Path(s.edited)
        if not edited_path.is_dir():
            raise CheckpointError(f"{s.edited}: no such directory (EDITED_DIR must be a baked checkpoint directory)")
        prov = read_edited_provenance(s.edited, s.force, warn)
        spec, layers, info = None, None, None
        if prov is not None:
            check_derived(s.original, original_path, prov, s.force, warn)
            check_edited_weights(edited_path, prov, s.force, warn)
            spec, layers = _edit_from_provenance(prov, edited_path / PROVENANCE_NAME)
            ns = prov.get("neuron_set") or {}
            info = {**_edit_info("baked", spec, "all", ns.get("sha256"), ns.get("method")),
                    "provenance_created": prov.get("created")}
        probes = [t for lang in texts for t in texts[lang][:8]]
        check = check_tokenizers(original_path, edited_path, probes)
        cond = Condition("edited", "baked", None, "all", len(spec.neurons) if spec else 0)
        return _Plan(cond, spec, layers, info, check)
    ns, label = (s.neurons, "--neurons") if isinstance(s.neurons, NeuronSet) else read_neuron_argument(str(s.neurons))
    ckpt = open_checkpoint(original_path)
    recorded = ns.model.fingerprint if ns.model is not None else None
    status = ckpt.fingerprint_status(recorded or None)
    if status == "legacy":
        warn(f"{label}: the neuron set records a shape-only fingerprint ({recorded}); ORIGINAL matches it by "
             "shape, which cannot tell it from another model of the same shapes")
    elif status == "different":
        msg = f"{label}: the neuron set was made for another model (fingerprint {recorded}, ORIGINAL has " \
              f"{ckpt.fingerprint()})"
        _refuse_unless_forced(msg, s.force, warn)
    keep = parse_layers(s.layers, ckpt.num_layers) if s.layers is not None else None
    # --layers first, then --top-k: the first K neurons within the kept layers (make_edit_spec's order)
    spec = make_edit_spec(ns, s.op, s.factor, top_k=s.top_k, layers=keep)
    check_neuron_range(spec, ckpt.num_layers, ckpt.intermediate_size, label)  # before the model is loaded
    layers = list(ns.method.layers) if ns.method and ns.method.layers else None
    if layers is not None and keep is not None:  # the control draws from the same restricted layers
        layers = [layer for layer in layers if layer in keep] or None
    info = _edit_info("hook", spec, s.positions, ns.sha256(), asdict(ns.method) if ns.method else None)
    return _Plan(Condition("edited", "hook", spec, s.positions, len(spec.neurons)), spec, layers, info)


def _control(s: EvaluateSettings, plan: _Plan, n_layers: int, width: int) -> tuple[Condition, dict[str, Any]]:
    """Random neurons: as many as edited, from the set's candidate layers (else the layers it
    touches), excluding the edited ones; seeded; applied as a hook like the edit."""
    from tnedit.edit import make_edit_spec
    from tnedit.identify import random_control

    spec = plan.spec
    if spec is None:
        raise InputError("--control random needs the edited neurons, but EDITED_DIR has no tnedit.json")
    layers = plan.method_layers or sorted({n.layer for n in spec.neurons})
    picked = random_control(NeuronSet(list(spec.neurons)), n_layers, width, s.seed, layers=layers)
    ctl = make_edit_spec(picked, spec.op, spec.factor if spec.op == "scale" else None)
    positions = plan.edited.positions
    info = {"kind": "random", "seed": s.seed, "layers": layers, "layers_text": format_layers(layers),
            "n_neurons": len(ctl.neurons), "positions": positions, "op": ctl.op, "factor": ctl.factor,
            "neurons_sha256": _spec_sha256(ctl), "neurons": [[n.layer, n.index] for n in ctl.neurons]}
    return Condition("control", "hook", ctl, positions, len(ctl.neurons)), info


def _same_source(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _overlap_warning(plan: _Plan, s: EvaluateSettings, data_info: dict[str, Any],
                     rows: Callable[[int], int]) -> str | None:
    """A warning when the evaluation rows include rows the neuron set was identified on.

    ``rows(limit)`` counts the data's rows up to ``limit``: the advice is a ``--skip`` that still
    leaves the requested pairs, or, when the data has too few rows after the identify rows, other data.
    """
    method = (plan.edit_info or {}).get("method") or {}
    used = method.get("data") or {}
    n_used = used.get("n_pairs") or used.get("limit")
    if not used.get("source") or not isinstance(n_used, int):
        return None
    if not _same_source(str(used["source"]), str(data_info["source"])) or s.skip >= n_used:
        return None
    overlap = (f"the evaluation rows {data_info['rows'][0]}–{data_info['rows'][1] - 1} overlap the {n_used} rows "
               f"of {used['source']} the neurons were identified on")
    total = rows(n_used + s.n_pairs)
    held_out = total - n_used
    if held_out >= s.n_pairs:
        return f"{overlap}; pass --skip {n_used} for a held-out evaluation"
    if held_out >= 2:
        return (f"{overlap}; only {held_out} rows follow them ({total} in all), fewer than --n-pairs {s.n_pairs}: "
                f"pass --skip {n_used} --n-pairs {held_out}, or held-out data with --data")
    return (f"{overlap}; the data has {total} rows, so none are held out: evaluate on other data with --data "
            "for a held-out evaluation")


def _collect() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate(settings: EvaluateSettings, warn: Callable[[str], None] | None = None,
             progress: Callable[[str], None] | None = None) -> EvaluationReport:
    """Run every condition and return the report (nothing is written; see :func:`write_report`).

    Hook edits: one model; each batch runs original, edited and control back to back. Baked
    EDITED_DIR: the original (and the control, a hook on it) first, then the edited model, loaded
    after the original is freed; KL uses the original's cached top-``kl_top_k`` log-probs.
    """
    from tnedit.model.loading import load_model

    t_start = time.perf_counter()
    warnings: list[str] = []
    timings: dict[str, float] = defaultdict(float)

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn:
            warn(msg)

    @contextmanager
    def timed(name: str, message: str | None = None) -> Iterator[None]:
        if progress and message:
            progress(message)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings[name] += time.perf_counter() - t0

    s = _check_settings(settings)
    texts, data_info = load_pairs(s)
    if data_info["n_pairs"] < s.n_pairs:
        _warn(f"only {data_info['n_pairs']} pairs available after --skip {s.skip} (asked for {s.n_pairs})")
    qa_sets, data_info["qa"] = load_qa_sets(s)
    sizes = {lang: len(v) for lang, v in texts.items()}
    original_path = resolve_source(s.original, revision=s.revision).path
    plan = _plan(s, original_path, texts, _warn)
    overlap = _overlap_warning(plan, s, data_info, lambda limit: count_rows(s, limit))
    if overlap:
        _warn(overlap)

    with timed("load_s", f"loading {s.original}"):
        lm = load_model(s.original, revision=s.revision, dtype=s.dtype, device=s.device)
    n_layers = len(lm.layers)
    original = Condition("original", "original")
    control, control_info = _control(s, plan, n_layers, lm.intermediate_size) if s.control else (None, None)
    conds = [c for c in (original, plan.edited, control) if c is not None]
    first_pass = [c for c in conds if c.source != "baked"]
    accs = {c.name: Accumulator(sizes) for c in conds}
    cache: dict[tuple[str, int], Any] | None = {} if plan.edited.source == "baked" else None
    gens: dict[str, Any] = {}

    with timed("forward_s"):
        forward(lm, texts, first_pass, accs, s, cache=cache, progress=progress)
    for cond in first_pass:
        with timed("generate_s", f"generation and QA: {cond.name}"):
            gens[cond.name] = run_generation(lm, cond, texts, qa_sets, s, show=progress is not None)
    original_info = {**asdict(lm.model_info()), "path": str(original_path), "dtype": str(lm.dtype),
                     "tokenizer": lm.tokenizer_facts()}
    device = str(lm.device)
    edited_info = None
    if plan.edited.source == "baked":
        del lm  # free the original before the edited model is loaded
        _collect()
        with timed("load_s", f"loading {s.edited}"):
            lm = load_model(str(s.edited), dtype=s.dtype, device=s.device)
        if len(lm.layers) != n_layers:
            raise InputError(f"EDITED has {len(lm.layers)} layers, ORIGINAL {n_layers}")
        with timed("forward_s"):
            forward(lm, texts, [plan.edited], accs, s, reference=cache, progress=progress)
        with timed("generate_s", "generation and QA: edited"):
            gens["edited"] = run_generation(lm, plan.edited, texts, qa_sets, s, show=progress is not None)
        edited_info = {"name_or_path": str(s.edited), "fingerprint": lm.fingerprint(), "dtype": str(lm.dtype),
                       "tokenizer_check": plan.tokenizer_check}
        cache = None
    del lm
    _collect()

    perm = M.derangement(sizes[s.english], s.seed)
    data: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "settings": s.to_dict(),
        "models": {"original": original_info, "edited": edited_info},
        "edit": plan.edit_info,
        "control": control_info,
        "data": data_info,
        "layers": list(range(n_layers)),
        "mid_layers": M.mid_layers(n_layers),
        "seeds": {"control": s.seed, "nonparallel_derangement": s.seed},
        "conditions": {c.name: _summarise(accs[c.name], c, s, n_layers, perm, gens[c.name]) for c in conds},
        "warnings": warnings,
    }
    data["headline"] = _headline(data, s)
    timings["total_s"] = time.perf_counter() - t_start
    data["runtime"] = {**{k: round(v, 2) for k, v in timings.items()}, "device": device}
    return EvaluationReport(data, warnings)


# --- output -------------------------------------------------------------------------------------


def write_report(report: EvaluationReport | dict[str, Any], out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write report.json, report.md and the PNG plots into ``out_dir``, atomically."""
    data = report.data if isinstance(report, EvaluationReport) else report
    errors = validate_report(data)
    if errors:
        raise ValueError("report does not validate: " + "; ".join(errors[:5]))
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_json(tmp / "report.json", data)
        plots = R.write_plots(data, tmp)
        (tmp / "report.md").write_text(R.render_report_markdown(data, plots), encoding="utf-8")
    return out


def card_markdown(data: dict[str, Any], plot_prefix: str | None = None) -> str:
    s = data["settings"]
    lines = [
        "## Evaluation",
        "",
        f"Original versus edited on {data['data']['n_pairs']} held-out parallel pairs "
        f"({s.get('english', 'en')}–{', '.join(s['languages'])}), evaluated with `tnedit evaluate` "
        f"({data['created']}).",
        "",
        R.render_markdown([R.headline_table(data)]).replace("### Headline\n", "").strip(),
        "",
    ]
    if plot_prefix is not None:
        lines += [f"![en–L2 similarity per layer]({plot_prefix}similarity.png)", ""]
    return "\n".join(lines)


def _local(path: str | Path | None) -> Path | None:
    """``path`` when it names something on this machine (not a Hub id, the built-in data or a neuron list)."""
    if path is None or isinstance(path, NeuronSet):
        return None
    local = Path(path).expanduser()
    return local if local.exists() else None


def check_report_dir(out: str | Path, settings: EvaluateSettings, overwrite: bool = False,
                     card_dir: str | Path | None = None) -> None:
    """Refuse a report directory that would destroy or live inside something the evaluation reads.

    OUT must not be, contain or lie inside ORIGINAL, EDITED or the ``--update-card`` directory, and
    must not be or contain the neurons file, ``--data`` or ``--qa`` (``--overwrite`` would delete them).
    Cheap: run it before any model is loaded.
    """
    sources = [p for p in map(_local, (settings.original, settings.edited, card_dir)) if p is not None]
    inputs = [p for p in map(_local, (settings.neurons, settings.data, settings.qa)) if p is not None]
    for source in sources or [None]:
        check_output_dir(out, source=source, overwrite=overwrite, inputs=inputs)
    require_writable(out, "-o")


def check_card_dir(card_dir: str | Path, original: str | Path | None = None) -> Path:
    """``--update-card DIR`` must be a checkpoint written by ``tnedit apply`` (it has tnedit.json), never ORIGINAL."""
    card_dir = Path(card_dir)
    if not card_dir.is_dir():
        raise InputError(f"--update-card: {card_dir} is not a directory")
    local = _local(original)
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
    from tnedit.formats.card import update_card_section
    from tnedit.checkpoint import CARD_NAME

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

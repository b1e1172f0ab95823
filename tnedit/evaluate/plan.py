"""What an evaluation runs, decided before any model is loaded: the edit under test, the control, and
the cheap consistency checks (EDITED derived from ORIGINAL, its weights the recorded ones, the same
tokenizer, evaluation rows that overlap the identify rows)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from tnedit.architectures import config_value
from tnedit.checkpoint import open_checkpoint, read_config
from tnedit.checkpoint.digests import open_digest_cache
from tnedit.checkpoint.verify import weights_problem
from tnedit.edit.spec import EditSpec, check_neuron_range, make_edit_spec
from tnedit.errors import CheckpointError, InputError
from tnedit.evaluate.passes import Condition
from tnedit.evaluate.settings import EvaluateSettings
from tnedit.experts import NeuronSpace
from tnedit.formats.descriptions import own_factors_text
from tnedit.formats.digest import sha256_bytes, sha256_json
from tnedit.formats.layers import format_layers, parse_layers
from tnedit.formats.neurons import NeuronSet, method_dict, read_neuron_argument
from tnedit.formats.provenance import NOT_A_CHECKPOINT, PROVENANCE_NAME, Provenance, read_provenance
from tnedit.identify.controls import random_control
from tnedit.reporting import Reporter

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "added_tokens.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
)


@dataclass
class Plan:
    """What to run, decided before any model is loaded."""

    edited: Condition
    spec: EditSpec | None  # the edited neurons (None only for a forced baked dir without tnedit.json)
    method_layers: list[int] | None
    edit_info: dict[str, Any] | None
    tokenizer_check: str | None = None


def spec_sha256(spec: EditSpec) -> str:
    """SHA-256 of the edit's ``[layer, index, factor]`` rows as JSON (the report's ``edit_sha256``)."""
    return sha256_json(spec.entries())


def refuse_unless_forced(msg: str, force: bool, reporter: Reporter, error: type[InputError] = InputError) -> None:
    if not force:
        raise error(msg + " (pass --force to evaluate anyway)")
    reporter.warn(msg)


# --- EDITED_DIR against ORIGINAL -------------------------------------------------------------------


def read_edited_provenance(edited: str, force: bool, reporter: Reporter) -> Provenance | None:
    """EDITED's checked tnedit.json; None (with a warning) when it has none and ``force`` is set."""
    if not (Path(edited) / PROVENANCE_NAME).is_file():
        msg = f"{edited}: no {PROVENANCE_NAME}; cannot check that it was derived from the original"
        refuse_unless_forced(msg, force, reporter, CheckpointError)
        return None
    return read_provenance(Path(edited), complete=True, missing=NOT_A_CHECKPOINT)


def check_edited_weights(edited: Path, provenance: Provenance, force: bool, reporter: Reporter,
                         no_cache: bool = False) -> None:
    """EDITED must load exactly the weight files tnedit.json records, with the recorded SHA-256s (those of
    files unchanged since an earlier check come from the digest cache unless ``no_cache``)."""
    unrecorded = sorted(set(open_checkpoint(edited).weight_files) - set(provenance.weights))
    cache = open_digest_cache(not no_cache, warn=reporter.warn).outside(edited)
    problem = weights_problem(edited, provenance, cache=cache)
    if problem is None and unrecorded:
        problem = f"{edited / unrecorded[0]}: weight file not recorded in {PROVENANCE_NAME} (apply did not write it)"
    if problem:
        refuse_unless_forced(problem, force, reporter, CheckpointError)


def same_source(a: str, b: str) -> bool:
    """The same text, or two existing paths to the same place."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _same_name(a: str, b: str) -> bool:
    if same_source(a, b):
        return True
    name = Path(a).expanduser().name
    return name == Path(b).expanduser().name and name not in ("", ".")


def check_derived(original: str, original_path: Path, provenance: Provenance, force: bool,
                  reporter: Reporter) -> None:
    """EDITED's provenance must name ORIGINAL (by name) and match its fingerprint.

    A shape-only fingerprint of tnedit 0.1 that matches is accepted with a warning: it cannot tell
    ORIGINAL from a fine-tune of the same shapes.
    """
    problems = []
    ckpt = open_checkpoint(original_path)
    recorded = provenance.source.fingerprint or None
    status = ckpt.fingerprint_status(recorded)
    if status == "legacy":
        reporter.warn(f"{PROVENANCE_NAME} of EDITED_DIR records a shape-only fingerprint ({recorded}); ORIGINAL "
                      "matches it by shape, which cannot tell it from another model of the same shapes")
    elif status == "different":
        problems.append(f"its source fingerprint {recorded} differs from ORIGINAL's {ckpt.fingerprint()}")
    name = str(provenance.source.name_or_path or "")
    if name and not _same_name(name, original) and not _same_name(name, str(original_path)):
        problems.append(f"it was made from '{name}', not '{original}'")
    if problems:
        msg = f"EDITED_DIR is not derived from ORIGINAL per {PROVENANCE_NAME}: " + "; ".join(problems)
        refuse_unless_forced(msg, force, reporter)


def _file_hashes(path: Path) -> dict[str, str]:
    return {name: sha256_bytes((path / name).read_bytes()) for name in TOKENIZER_FILES if (path / name).is_file()}


def _vocab_size(config: dict[str, Any]) -> Any:
    return config_value(config, "vocab_size")


def check_tokenizers(original_path: Path, edited_path: Path, probes: Sequence[str]) -> str:
    """Refuse to compare models whose tokenizers or vocabularies differ; return how it was checked."""
    vocab_a, vocab_b = _vocab_size(read_config(original_path)), _vocab_size(read_config(edited_path))
    if vocab_a != vocab_b:
        raise InputError(f"ORIGINAL and EDITED have different vocabularies (vocab_size {vocab_a} vs {vocab_b})")
    ha, hb = _file_hashes(original_path), _file_hashes(edited_path)
    if ha and ha == hb:
        return "tokenizer files identical (sha256)"
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


# --- the edit under test ---------------------------------------------------------------------------


def edit_info(kind: str, spec: EditSpec, positions: str, neuron_set_sha256: str | None,
              method: Any) -> dict[str, Any]:
    """The report's ``edit`` block (with ``own_factors`` only when the neurons carry factors of their own)."""
    info = {"source": kind, "op": spec.op, "factor": spec.factor, "positions": positions,
            "n_neurons": len(spec.neurons), "neuron_set_sha256": neuron_set_sha256, "edit_sha256": spec_sha256(spec),
            "per_layer": spec.per_layer_counts(), "method": method}
    per_expert = spec.per_expert_counts()
    if per_expert:  # a mixture-of-experts edit: the report's per-layer tables count its neurons per expert
        info["per_expert"] = {str(layer): counts for layer, counts in per_expert.items()}
    own = own_factors_text(spec.op, spec.factor, (spec.factor_of(n) for n in spec.neurons))
    return {**info, "own_factors": own} if own else info


def _edit_from_provenance(provenance: Provenance, where: Path) -> tuple[EditSpec, list[int] | None]:
    neurons = provenance.edit.edited_neurons(where)
    op = provenance.edit.op or "zero"
    spec = make_edit_spec(neurons, op, provenance.edit.factor if op == "scale" else None)
    method = provenance.neuron_set.method or {}
    return spec, (method.get("layers") or None)


def _plan_baked(s: EvaluateSettings, original_path: Path, texts: dict[str, list[str]], reporter: Reporter) -> Plan:
    edited_path = Path(str(s.edited))
    if not edited_path.is_dir():
        raise CheckpointError(f"{s.edited}: no such directory (EDITED_DIR must be a baked checkpoint directory)")
    provenance = read_edited_provenance(str(s.edited), s.force, reporter)
    spec, layers, info = None, None, None
    if provenance is not None:
        check_derived(s.original, original_path, provenance, s.force, reporter)
        check_edited_weights(edited_path, provenance, s.force, reporter, s.no_cache)
        spec, layers = _edit_from_provenance(provenance, edited_path / PROVENANCE_NAME)
        neuron_set = provenance.neuron_set
        info = {**edit_info("baked", spec, "all", neuron_set.sha256, neuron_set.method),
                "provenance_created": provenance.created}
    probes = [t for lang in texts for t in texts[lang][:8]]
    check = check_tokenizers(original_path, edited_path, probes)
    cond = Condition("edited", "baked", None, "all", len(spec.neurons) if spec else 0)
    return Plan(cond, spec, layers, info, check)


def _plan_hook(s: EvaluateSettings, original_path: Path, reporter: Reporter) -> Plan:
    if isinstance(s.neurons, NeuronSet):
        neuron_set, label = s.neurons, "--neurons"
    else:
        neuron_set, label = read_neuron_argument(str(s.neurons))
    ckpt = open_checkpoint(original_path)
    recorded = neuron_set.model.fingerprint if neuron_set.model is not None else None
    status = ckpt.fingerprint_status(recorded or None)
    if status == "legacy":
        reporter.warn(f"{label}: the neuron set records a shape-only fingerprint ({recorded}); ORIGINAL matches it "
                      "by shape, which cannot tell it from another model of the same shapes")
    elif status == "different":
        msg = (f"{label}: the neuron set was made for another model (fingerprint {recorded}, ORIGINAL has "
               f"{ckpt.fingerprint()})")
        refuse_unless_forced(msg, s.force, reporter)
    keep = parse_layers(s.layers, ckpt.num_layers) if s.layers is not None else None
    # --layers first, then --top-k: the first K neurons within the kept layers (make_edit_spec's order)
    spec = make_edit_spec(neuron_set, s.op, s.factor, top_k=s.top_k, layers=keep)
    check_neuron_range(spec, ckpt.neuron_space, label)  # before the model is loaded
    method = neuron_set.method
    layers = list(method.layers) if method and method.layers else None
    if layers is not None and keep is not None:  # the control draws from the same restricted layers
        layers = [layer for layer in layers if layer in keep] or None
    info = edit_info("hook", spec, str(s.positions), neuron_set.sha256(), method_dict(method) if method else None)
    return Plan(Condition("edited", "hook", spec, s.positions, len(spec.neurons)), spec, layers, info)


def plan_evaluation(s: EvaluateSettings, original_path: Path, texts: dict[str, list[str]], *,
                    reporter: Reporter) -> Plan:
    """Read the edit (hook neuron set or baked dir) and run the cheap consistency checks.

    ``s`` is resolved (:meth:`EvaluateSettings.resolve`); warnings go to ``reporter``.
    """
    if s.edited is not None:
        return _plan_baked(s, original_path, texts, reporter)
    return _plan_hook(s, original_path, reporter)


def plan_control(plan: Plan, space: NeuronSpace, seed: int) -> tuple[Condition, dict[str, Any]]:
    """Random neurons: as many as edited, from the set's candidate layers (else the layers it
    touches), excluding the edited ones; seeded; applied as a hook like the edit. In a
    mixture-of-experts model, as many per expert as edited there."""
    spec = plan.spec
    if spec is None:
        raise InputError("--control random needs the edited neurons, but EDITED_DIR has no tnedit.json")
    layers = plan.method_layers or sorted({n.layer for n in spec.neurons})
    picked = random_control(NeuronSet(list(spec.neurons)), space.num_layers, space.width, seed, layers=layers,
                            space=space)
    control = make_edit_spec(picked, spec.op, spec.factor if spec.op == "scale" else None)
    positions = plan.edited.positions
    info = {"kind": "random", "seed": seed, "layers": layers, "layers_text": format_layers(layers),
            "n_neurons": len(control.neurons), "positions": positions, "op": control.op, "factor": control.factor,
            "neurons_sha256": spec_sha256(control), "neurons": [list(n.key) for n in control.neurons]}
    return Condition("control", "hook", control, positions, len(control.neurons)), info


def overlap_warning(plan: Plan, data_info: dict[str, Any], rows: Callable[[int], int], *, skip: int,
                    n_pairs: int) -> str | None:
    """A warning when the evaluation rows include rows the neuron set was identified on.

    ``rows(limit)`` counts the data's rows up to ``limit``: the advice is a ``--skip`` that still
    leaves the requested pairs, or, when the data has too few rows after the identify rows, other data.
    """
    method = (plan.edit_info or {}).get("method") or {}
    used = method.get("data") or {}
    n_used = used.get("n_pairs") or used.get("limit")
    if not used.get("source") or not isinstance(n_used, int):
        return None
    if not same_source(str(used["source"]), str(data_info["source"])) or skip >= n_used:
        return None
    overlap = (f"the evaluation rows {data_info['rows'][0]}–{data_info['rows'][1] - 1} overlap the {n_used} rows "
               f"of {used['source']} the neurons were identified on")
    total = rows(n_used + n_pairs)
    held_out = total - n_used
    if held_out >= n_pairs:
        return f"{overlap}; pass --skip {n_used} for a held-out evaluation"
    if held_out >= 2:
        return (f"{overlap}; only {held_out} rows follow them ({total} in all), fewer than --n-pairs {n_pairs}: "
                f"pass --skip {n_used} --n-pairs {held_out}, or held-out data with --data")
    return (f"{overlap}; the data has {total} rows, so none are held out: evaluate on other data with --data "
            "for a held-out evaluation")

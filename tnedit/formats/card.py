"""Model cards for edited checkpoints: Hub front matter, the edit tables, marked sections.

Sections that tnedit owns sit between ``<!-- tnedit:NAME:start -->`` and ``<!-- tnedit:NAME:end -->``
markers so later steps (evaluate, push) can replace them without touching the author's text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tnedit.formats.descriptions import own_factors_text, tune_summary
from tnedit.formats.neurons import expert_label
from tnedit.formats.outputs import write_text
from tnedit.formats.provenance import PROVENANCE_NAME, Provenance, SourceRecord

_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n?", re.S)


def read_front_matter(text: str) -> dict[str, Any]:
    match = _FRONT.match(text)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def strip_front_matter(text: str) -> str:
    return _FRONT.sub("", text, count=1)


def _marker(name: str, which: str) -> str:
    return f"<!-- tnedit:{name}:{which} -->"


def section(name: str, markdown: str) -> str:
    return f"{_marker(name, 'start')}\n{markdown.rstrip()}\n{_marker(name, 'end')}\n"


def replace_section(text: str, name: str, markdown: str) -> str:
    """Replace the named section, or insert it before the source card's text, or append it."""
    block = section(name, markdown)
    pattern = re.compile(re.escape(_marker(name, "start")) + r".*?" + re.escape(_marker(name, "end")) + r"\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _m: block, text, count=1)
    anchor = _marker("source-card", "start")
    if anchor in text:
        return text.replace(anchor, block + "\n" + anchor, 1)
    return text.rstrip() + "\n\n" + block


def update_card_section(card_path: str | Path, name: str, markdown: str) -> None:
    """Replace one section of a card atomically: a reader never sees half a card, a symlink is not written through."""
    path = Path(card_path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, replace_section(text, name, markdown))


def base_model_id(source: SourceRecord, source_meta: dict[str, Any]) -> str:
    """The Hub id of the base model: the source id, a Hub cache path's repo, or the source card's own."""
    name = str(source.name_or_path)
    if source.is_hub:
        return name
    match = re.search(r"models--([^/]+?)--([^/]+)", name)
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    declared = source_meta.get("base_model")
    if isinstance(declared, str) and declared:
        return declared
    return Path(name).name


def _front_matter(provenance: Provenance, source_meta: dict[str, Any]) -> dict[str, Any]:
    method = provenance.neuron_set.method or {}
    tags = ["tnedit", "transfer-neurons", "neuron-editing", "multilingual"]
    for tag in source_meta.get("tags") or []:
        if tag not in tags:
            tags.append(tag)
    meta: dict[str, Any] = {"base_model": base_model_id(provenance.source, source_meta)}
    for key in ("license", "license_name", "license_link"):
        if source_meta.get(key) is not None:
            meta[key] = source_meta[key]
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = source_meta.get("pipeline_tag", "text-generation")
    meta["tags"] = tags
    languages = [method.get("language")] if method.get("language") else []
    languages += [lang for lang in method.get("languages") or [] if lang not in languages]
    if source_meta.get("language"):
        meta["language"] = source_meta["language"]
    elif languages:
        meta["language"] = sorted({"en", *languages})
    return meta


def edit_table(provenance: Provenance) -> str:
    """Neurons edited per layer; for a mixture-of-experts edit, also per expert (``e0:3 shared:2``)."""
    edit = provenance.edit
    layers = sorted(edit.per_layer.items(), key=lambda kv: int(kv[0]))
    per_expert = _per_expert(edit.neurons or [])
    if not per_expert:
        lines = ["| layer | neurons edited |", "|---:|---:|"] + [f"| {layer} | {count} |" for layer, count in layers]
        return "\n".join([*lines, f"| **total** | **{edit.n_neurons}** |"])
    lines = ["| layer | neurons edited | per expert |", "|---:|---:|:---|"]
    for layer, count in layers:
        experts = " ".join(f"{name}:{n}" for name, n in sorted(per_expert.get(layer, Counter()).items()))
        lines.append(f"| {layer} | {count} | {experts} |")
    return "\n".join([*lines, f"| **total** | **{edit.n_neurons}** | |"])


def _per_expert(entries: list[list[Any]]) -> dict[str, Counter[str]]:
    """Per layer, the edited neurons per expert, from provenance ``[layer, index, factor(, expert)]`` entries;
    empty when none names an expert."""
    if not any(len(entry) == 4 for entry in entries):
        return {}
    counts: dict[str, Counter[str]] = {}
    for entry in entries:
        counts.setdefault(str(entry[0]), Counter())[expert_label(entry[3] if len(entry) == 4 else None)] += 1
    return counts


def _origin(method: dict[str, Any]) -> str:
    """Where the neurons came from, as the neuron set's method block says."""
    if method.get("kind") == "transfer":
        return (
            f" They are the top Type-{method.get('type')} transfer neurons for "
            f"`{method.get('language')}` (Tezuka & Inoue, EMNLP 2025), ranked by `tnedit identify`."
        )
    if method.get("kind") == "tune":
        return _tune_origin(method)
    if method.get("kind") == "manual":
        return " The neurons were listed by hand."
    if method.get("kind"):
        return f" The neuron set was made by `tnedit identify` ({method.get('kind')})."
    return ""


def _tune_origin(method: dict[str, Any]) -> str:
    """What ``tnedit tune`` measured: the target's and every kept language's perplexity ratio, on both splits."""
    summary = tune_summary(method)
    measured = f" (perplexity ratios: {summary})" if summary else ""
    return f" They were chosen by `tnedit tune` to break `{method.get('language')}`{measured}."


def _describe_edit(provenance: Provenance) -> str:
    edit, src = provenance.edit, provenance.source
    method = provenance.neuron_set.method or {}
    own = own_factors_text(edit.op or "zero", edit.factor, (float(n[2]) for n in edit.neurons or [] if len(n) > 2))
    what = f"scaled by {own}" if own else "zeroed" if edit.op == "zero" else f"scaled by {edit.factor:g}"
    count = f"{edit.n_neurons} MLP neuron{'s' if edit.n_neurons != 1 else ''}"
    origin = _origin(method)
    revision = f" at revision `{src.revision}`" if src.revision else ""
    return (
        f"This checkpoint is `{src.name_or_path}`{revision} with {count} "
        f"{what} in the MLP output projection ({src.model_type}, {src.num_layers} layers).{origin} "
        "Every other tensor is bit-identical to the base model."
    )


_PROVENANCE_TEXT = (
    "`tnedit.json` records the source and its revision, the neuron set's SHA-256, the operation, "
    "library versions, the command, the SHA-256 of every weight file and of the base model's "
    "file it was made from, and the SHA-256 of the revert file. "
    "`tnedit_revert.safetensors` holds the original values: `tnedit revert DIR -o OUT` restores "
    "the base weights byte for byte and checks them against those digests."
)


def _edit_section(provenance: Provenance) -> str:
    parts = [_describe_edit(provenance), "", "## Edit", "", edit_table(provenance), "", "## Semantics", "",
             provenance.edit.semantics, "", "## Provenance", "", _PROVENANCE_TEXT]
    return section("edit", "\n".join(parts))


def render_card(provenance: Provenance | Mapping[str, Any], source_card: str | None) -> str:
    """The model card of an edited checkpoint, from its provenance (a mapping as read from tnedit.json works too)."""
    if not isinstance(provenance, Provenance):
        provenance = Provenance.from_dict(provenance, PROVENANCE_NAME)
    source_meta = read_front_matter(source_card or "")
    meta = _front_matter(provenance, source_meta)
    body = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {Path(provenance.source.name_or_path).name} — neuron-edited with tnedit",
        "",
        _edit_section(provenance),
    ]
    if source_card and strip_front_matter(source_card).strip():
        body += [
            "",
            section("source-card", "## Base model card\n\n" + strip_front_matter(source_card).strip()),
        ]
    return "\n".join(body).rstrip() + "\n"


# --- checking a card before it is published ------------------------------------------------------


def card_problems(meta: dict[str, Any], provenance: Provenance) -> list[str]:
    """What the card's Hub front matter lacks: base_model, library_name, the tnedit tag, the licence."""
    problems = [f"no {key}" for key in ("base_model", "library_name") if not meta.get(key)]
    tags = meta.get("tags") or []
    if "tnedit" not in (tags if isinstance(tags, list) else [tags]):
        problems.append("tags lack 'tnedit'")
    licence = provenance.source.license
    if licence and not meta.get("license"):
        problems.append(f"no license (the base model's is {licence})")
    return problems


def complete_front_matter(text: str, provenance: Provenance, expected: dict[str, Any]) -> str:
    """Add the missing Hub metadata to ``text``'s front matter; keep every key the author set."""
    meta = dict(read_front_matter(text))
    for key in ("base_model", "library_name"):
        if not meta.get(key) and expected.get(key):
            meta[key] = expected[key]
    licence = provenance.source.license
    if licence and not meta.get("license"):
        for key in ("license", "license_name", "license_link"):
            if expected.get(key) is not None:
                meta[key] = expected[key]
        meta.setdefault("license", licence)
    tags = meta.get("tags") or []
    tags = list(tags) if isinstance(tags, list) else [tags]
    meta["tags"] = tags + [t for t in expected.get("tags") or ["tnedit"] if t not in tags]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip()
    body = strip_front_matter(text).lstrip("\n")
    return f"---\n{front}\n---\n\n{body}"

"""identify --centroids: tnedit against an independent implementation of the authors' pipeline (METHOD.md).

The reference here shares no code with tnedit's capture, passes or scoring: it runs one sentence at a time
(batch 1, no padding) with ``output_hidden_states=True``, takes the centroids from ``hidden_states[l + 1]`` at
the last token (the authors' code; for the last layer HF's entry comes after the final norm), reads R and a_i
with plain forward hooks written below, and scores every neuron by the explicit formula
``cos(R + a_i v_i, C) − cos(R, C)`` on materialised vectors in float64. ``layer-outputs`` (the default) is the
same reference with the last entry replaced by the last decoder layer's raw output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.hostile import run_cli
from tests.support.models import real_model_dir
from tests.support.paths import TATOEBA
from tests.support.sentences import EN, JA
from tests.support.tiny import TINY_TYPES, make_tiny
from tnedit.architectures import decoder_layers
from tnedit.formats.neurons import load_neurons
from tnedit.identify.passes import final_norm
from tnedit.identify.pipeline import run_identify
from tnedit.identify.settings import IdentifySettings
from tnedit.model.loading import load_model
from tnedit.reporting import NullReporter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODES = ("layer-outputs", "hidden-states")
SCORE_RTOL = 2e-6  # of the largest |score| of a layer: float32 forward passes (batched vs one by one), float32 files


# --- the reference -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """Where the reference hooks: R is the input of ``residual``; ``out_norm`` is Gemma's post-MLP (1 + w) norm."""

    residual: str
    out_norm: str | None = None


# Written out here, not read from tnedit's registry, so a wrong registry entry cannot hide in both.
FAMILIES = {
    "llama": Family("post_attention_layernorm"),
    "gemma3_text": Family("pre_feedforward_layernorm", "post_feedforward_layernorm"),
}


@dataclass
class SentenceStates:
    """One sentence's last-token states, float64: HF's hidden_states, the raw last-layer output and, when read,
    per layer R, the activations a and the factor that turns a_i v_i into what is added (None without a norm)."""

    hidden: list[np.ndarray]
    raw_last: np.ndarray
    residual: list[np.ndarray]
    acts: list[np.ndarray]
    scale: list[np.ndarray] | None


def _last(x: torch.Tensor | tuple) -> np.ndarray:
    tensor = x[0] if isinstance(x, tuple | list) else x
    return tensor[0, -1].detach().double().numpy()


def _keep_input(store: dict, key: tuple) -> Callable:
    def hook(_module, args):
        store[key] = _last(args[0])

    return hook


def _keep_output(store: dict, key: tuple) -> Callable:
    def hook(_module, _args, out):
        store[key] = _last(out)

    return hook


def _hooks(layers, family: Family, seen: dict, with_mlp: bool) -> list:
    handles = [layers[-1].register_forward_hook(_keep_output(seen, ("raw_last",)))]
    for i, layer in enumerate(layers if with_mlp else []):
        handles.append(getattr(layer, family.residual).register_forward_pre_hook(_keep_input(seen, ("r", i))))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(_keep_input(seen, ("a", i))))
        if family.out_norm:
            handles.append(getattr(layer, family.out_norm).register_forward_pre_hook(_keep_input(seen, ("y", i))))
    return handles


def _out_norm_scales(layers, family: Family, seen: dict) -> list[np.ndarray]:
    """Gemma: the MLP output y is added as y / rms(y) · (1 + w), so neuron i adds a_i (1 + w) ⊙ v_i / rms(y)."""
    scales = []
    for i, layer in enumerate(layers):
        norm = getattr(layer, family.out_norm)
        y = seen[("y", i)]
        scales.append((1.0 + norm.weight.detach().double().numpy()) / np.sqrt(np.mean(y * y) + norm.eps))
    return scales


def read_sentence(model, tokenizer, family: Family, text: str, with_mlp: bool = True) -> SentenceStates:
    """One forward pass of one sentence (batch 1, no padding) with output_hidden_states=True and plain hooks."""
    layers = model.model.layers
    seen: dict[tuple, np.ndarray] = {}
    handles = _hooks(layers, family, seen, with_mlp)
    try:
        with torch.no_grad():
            out = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    count = len(layers) if with_mlp else 0
    scale = _out_norm_scales(layers, family, seen) if with_mlp and family.out_norm else None
    return SentenceStates([_last(h) for h in out.hidden_states], seen[("raw_last",)],
                          [seen[("r", i)] for i in range(count)], [seen[("a", i)] for i in range(count)], scale)


def layer_state(states: SentenceStates, layer: int, mode: str) -> np.ndarray:
    """h^l(s): ``hidden_states[l + 1]``; for the default mode the last layer's raw output instead of HF's entry."""
    if mode == "layer-outputs" and layer == len(states.hidden) - 2:
        return states.raw_last
    return states.hidden[layer + 1]


def reference_centroids(en: Sequence[SentenceStates], l2: Sequence[SentenceStates], mode: str) -> dict[int, np.ndarray]:
    """{type: [layers, d]}: C_shared = mean_j (h(e_j) + h(x_j)) / 2 (Type-1), C_L2 = mean_j h(x_j) (Type-2)."""
    count = len(l2[0].hidden) - 1
    mean_en = np.stack([np.mean([layer_state(s, i, mode) for s in en], axis=0) for i in range(count)])
    mean_l2 = np.stack([np.mean([layer_state(s, i, mode) for s in l2], axis=0) for i in range(count)])
    return {1: (mean_en + mean_l2) / 2.0, 2: mean_l2}


def _cosine(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (c @ x) / (np.linalg.norm(c) * np.linalg.norm(x, axis=0))


def reference_scores(model, l2: Sequence[SentenceStates], centroids: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """{type: [layers, m]}: mean_s [cos(R + a_i v_i, C) − cos(R, C)] with every R + a_i v_i materialised."""
    out = {t: np.zeros((len(l2[0].residual), model.config.intermediate_size)) for t in centroids}
    for i, layer in enumerate(model.model.layers):
        v = layer.mlp.down_proj.weight.detach().double().numpy()  # (d, m): v_i is column i
        for states in l2:
            r = states.residual[i]
            share = v if states.scale is None else states.scale[i][:, None] * v
            moved = r[:, None] + share * states.acts[i][None, :]  # (d, m): column i is R + a_i v_i
            for t, c in centroids.items():
                out[t][i] += _cosine(moved, c[i]) - _cosine(r[:, None], c[i])[0]
    return {t: s / len(l2) for t, s in out.items()}


def reference_run(model_dir: Path, family: Family, en: Sequence[str], l2: Sequence[str]) -> dict[str, dict]:
    """{mode: {type: scores [layers, m]}} of the reference, for both centroid sources."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    en_states = [read_sentence(model, tokenizer, family, text, with_mlp=False) for text in en]
    l2_states = [read_sentence(model, tokenizer, family, text) for text in l2]
    return {mode: reference_scores(model, l2_states, reference_centroids(en_states, l2_states, mode))
            for mode in MODES}


def ranked(scores: np.ndarray, layers: Sequence[int], k: int) -> list[tuple[int, int]]:
    """The top k (layer, index) of ``layers`` by score, descending."""
    candidates = [(float(scores[layer, i]), layer, i) for layer in layers for i in range(scores.shape[1])]
    candidates.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [(layer, i) for _, layer, i in candidates[:k]]




# --- tnedit --------------------------------------------------------------------------------------


def _write_tsv(path: Path, en: Sequence[str], l2: Sequence[str]) -> Path:
    path.write_text("en\tja\n" + "".join(f"{a}\t{b}\n" for a, b in zip(en, l2, strict=True)), encoding="utf-8")
    return path


def tnedit_identify(model_dir: Path, data: Path, out: Path, mode: str, k: int, *extra: str) -> Path:
    """``tnedit identify --centroids MODE`` through the CLI, in this process; returns the output directory."""
    from tnedit.cli import main

    args = ["identify", str(model_dir), "--data", str(data), "--lang", "ja", "--type", "both", "-k", str(k),
            "--centroids", mode, "--dtype", "float32", "--device", "cpu", "-o", str(out), "--quiet", *extra]
    try:
        main(args)
    except SystemExit as exc:
        pytest.fail(f"tnedit {' '.join(args)} exited {exc.code}")
    return out


def tnedit_scores(out: Path) -> dict[int, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(str(out / "scores-ja.safetensors"))
    return {t: tensors[f"type{t}"].astype(np.float64) for t in (1, 2)}


def tnedit_ranking(out: Path, neuron_type: int) -> list[tuple[int, int]]:
    return [n.key for n in load_neurons(out / f"neurons-ja-type{neuron_type}.json").neurons]


def candidate_layers(out: Path, neuron_type: int) -> list[int]:
    return load_neurons(out / f"neurons-ja-type{neuron_type}.json").method.layers


def assert_scores_close(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    for layer in range(reference.shape[0]):
        scale = float(np.abs(reference[layer]).max())
        np.testing.assert_allclose(ours[layer], reference[layer], rtol=SCORE_RTOL, atol=SCORE_RTOL * scale,
                                   err_msg=f"{what}, layer {layer}")


# --- tiny models ---------------------------------------------------------------------------------

K_TINY = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Per family (built once): the model directory, tnedit's output per mode and the reference scores per mode."""
    root = tmp_path_factory.mktemp("centroids")
    data = _write_tsv(root / "en-ja.tsv", EN, JA)
    cache: dict[str, tuple[Path, dict[str, Path], dict[str, dict]]] = {}

    def get(name: str):
        if name not in cache:
            model_dir = make_tiny(name, root)
            outs = {mode: tnedit_identify(model_dir, data, root / f"{name}-{mode}", mode, K_TINY) for mode in MODES}
            cache[name] = (model_dir, outs, reference_run(model_dir, FAMILIES[name], EN, JA))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("mode", MODES)
def test_scores_and_ranking_equal_the_reference(tiny, name, mode):
    _, outs, reference = tiny(name)
    ours = tnedit_scores(outs[mode])
    for t in (1, 2):
        assert_scores_close(ours[t], reference[mode][t], f"{name} --centroids {mode} type {t}")
        layers = candidate_layers(outs[mode], t)
        assert tnedit_ranking(outs[mode], t) == ranked(reference[mode][t], layers, K_TINY)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_modes_differ_in_the_last_layer_only(tiny, name):
    model_dir, outs, reference = tiny(name)
    last = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"] - 1
    plain, authors = tnedit_scores(outs["layer-outputs"]), tnedit_scores(outs["hidden-states"])
    for t in (1, 2):
        np.testing.assert_array_equal(plain[t][:last], authors[t][:last])
        assert not np.allclose(plain[t][last], authors[t][last], rtol=1e-3, atol=0)
        # The reference agrees on what the difference is: its two modes differ in the same place.
        assert not np.allclose(reference["layer-outputs"][t][last], reference["hidden-states"][t][last], rtol=1e-3)
    # Type-2's default candidates include the last layer, Type-1's do not: only Type-2's set changes.
    assert last in candidate_layers(outs["hidden-states"], 2) and last not in candidate_layers(outs["hidden-states"], 1)
    assert tnedit_ranking(outs["layer-outputs"], 1) == tnedit_ranking(outs["hidden-states"], 1)
    assert tnedit_ranking(outs["layer-outputs"], 2) != tnedit_ranking(outs["hidden-states"], 2)


def test_the_neuron_sets_and_scores_files_record_the_mode(tiny, tmp_path, capsys):
    _, outs, _ = tiny("llama")
    for mode in MODES:
        for t in (1, 2):
            path = outs[mode] / f"neurons-ja-type{t}.json"
            method = json.loads(path.read_text(encoding="utf-8"))["method"]
            # The default is not written (a default set is byte-identical to one written before the key existed).
            assert method.get("centroids") == (None if mode == "layer-outputs" else mode)
            assert load_neurons(path).method.centroids == mode
        # select re-ranks a scores file into a set of the same mode.
        selected = tmp_path / f"{mode}.json"
        code, _, err = run_cli(["select", str(outs[mode] / "scores-ja.safetensors"), "--type", "2", "-k", "5",
                                "-o", str(selected), "--quiet"], capsys)
        assert code == 0, err
        assert load_neurons(selected).method.centroids == mode


def test_hidden_state_run_resumes_to_the_same_files(tiny, tmp_path):
    """Interrupted mid centroid pass and resumed, a --centroids hidden-states run writes what an uninterrupted one
    does (the saved last-layer sums are of normed states; a state of the other source is refused, see the
    hostile matrix)."""
    model_dir, _, _ = tiny("llama")
    data = _write_tsv(tmp_path / "en-ja.tsv", EN, JA)

    def settings(out: Path, **kw) -> IdentifySettings:
        return IdentifySettings(model=str(model_dir), langs=["ja"], data=str(data), type="both", k=K_TINY,
                                batch_size=2, device="cpu", centroids="hidden-states", output=out, **kw)

    def stop(name: str, done: int, _total: int) -> None:
        if name == "ja:centroids" and done == 3:
            raise KeyboardInterrupt

    whole = run_identify(settings(tmp_path / "whole"), reporter=NullReporter())
    with pytest.raises(KeyboardInterrupt):
        run_identify(settings(tmp_path / "cut", checkpoint_every=1), on_batch=stop, reporter=NullReporter())
    resumed = run_identify(settings(tmp_path / "cut", checkpoint_every=1, resume=True), reporter=NullReporter())
    for name in ("neurons-ja-type1.json", "neurons-ja-type2.json"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    for t, scores in tnedit_scores(tmp_path / "whole").items():  # the tensors bit for bit (metadata order varies)
        np.testing.assert_array_equal(tnedit_scores(tmp_path / "cut")[t], scores)
    assert resumed.neurons("ja", 2).method.centroids == whole.neurons("ja", 2).method.centroids == "hidden-states"


@pytest.mark.parametrize("name", list(TINY_TYPES))
def test_final_norm_gives_the_last_hidden_state(name, tmp_path):
    """The registry's final norm applied to the raw last-layer output is HF's last output_hidden_states entry."""
    lm = load_model(str(make_tiny(name, tmp_path)), dtype="float32", device="cpu")
    seen: dict[tuple, np.ndarray] = {}
    handle = decoder_layers(lm.model, lm.arch)[-1].register_forward_hook(_keep_output(seen, ("raw",)))
    try:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([[1, 40, 41, 42, 43]]), output_hidden_states=True)
    finally:
        handle.remove()
    expected = _last(out.hidden_states[-1])
    with torch.no_grad():
        got = final_norm(lm)(torch.from_numpy(seen[("raw",)]).float()[None]).double().numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(seen[("raw",)], expected, rtol=1e-3)  # the norm is not the identity here


# --- the real model ------------------------------------------------------------------------------

REAL_PAIRS = 100
K_REAL = 100


def tatoeba_pairs(count: int) -> tuple[list[str], list[str]]:
    """The first ``count`` en–ja pairs of the Tatoeba training file (header row skipped, cells stripped)."""
    tsv = TATOEBA / "en-ja.train.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} not found")
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()[1 : count + 1]]
    return [r[0].strip() for r in rows], [r[1].strip() for r in rows]


@pytest.mark.real
@pytest.mark.slow
def test_real_smollm2_equals_the_reference(tmp_path):
    """SmolLM2-135M, 100 Tatoeba en–ja pairs, fp32 on the CPU: tnedit's top 100 are the reference's, in order."""
    model_dir = real_model_dir("smollm2-135m")
    en, ja = tatoeba_pairs(REAL_PAIRS)
    data = _write_tsv(tmp_path / "en-ja.tsv", en, ja)
    reference = reference_run(model_dir, FAMILIES["llama"], en, ja)
    outs = {mode: tnedit_identify(model_dir, data, tmp_path / mode, mode, K_REAL) for mode in MODES}
    for mode, t in (("hidden-states", 2), ("layer-outputs", 1), ("layer-outputs", 2)):
        expected = ranked(reference[mode][t], candidate_layers(outs[mode], t), K_REAL)
        assert tnedit_ranking(outs[mode], t) == expected, f"--centroids {mode} type {t}"
    shared = set(tnedit_ranking(outs["layer-outputs"], 2)) & set(tnedit_ranking(outs["hidden-states"], 2))
    print(f"SmolLM2-135M, {REAL_PAIRS} en-ja pairs: the two modes share {len(shared)} of the Type-2 top {K_REAL}")

"""Massive-activation neurons: identify's mean |activation| on English, its marking, ``--exclude-massive``.

The references are independent: a forward pre-hook of this file on each output projection, one unpadded
sentence at a time, and the exclusion recomputed from the recorded array with numpy.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.integration.test_identify import CORPUS, identify, models, settings  # noqa: F401 (fixture)
from tests.support.hostile import run_cli
from tests.support.sentences import EN
from tnedit.architectures import decoder_layers, resolve_module
from tnedit.errors import InputError, TneditWarning
from tnedit.formats.neurons import load_neurons
from tnedit.formats.scores import ScoresFile
from tnedit.identify.resume import RESUME_DIR
from tnedit.identify.selection import select_from_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_mean_abs(lm, sentences) -> np.ndarray:
    """Mean |input of the output projection| over every token of every sentence, one sentence per forward."""
    layers = decoder_layers(lm.model, lm.arch)
    sums = [torch.zeros(lm.intermediate_size, dtype=torch.float64) for _ in layers]

    def hook(i):
        def add(_module, args) -> None:
            sums[i] += args[0].reshape(-1, args[0].shape[-1]).double().abs().sum(0)

        return add

    handles = [resolve_module(layer, lm.arch.out_proj).register_forward_pre_hook(hook(i))
               for i, layer in enumerate(layers)]
    tokens = 0
    try:
        with torch.no_grad():
            for sentence in sentences:
                encoded = lm.tokenizer(sentence, return_tensors="pt")
                tokens += int(encoded["input_ids"].shape[1])
                lm.model(**encoded)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(sums).numpy() / tokens


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_mean_abs_activation_equals_brute_force(models, tmp_path, name):  # noqa: F811
    _, lm = models(name)
    expected = brute_mean_abs(lm, EN[: len(CORPUS.column("ja"))])
    batched = identify(settings(batch_size=4, output=tmp_path / "b4"), lm=lm, corpus=CORPUS)
    single = identify(settings(batch_size=1), lm=lm, corpus=CORPUS)
    for result in (batched, single):
        got = result.stats["ja"].mean_abs_activation
        assert got.shape == (lm.num_layers, lm.intermediate_size)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    stored = ScoresFile.load(tmp_path / "b4" / "scores-ja.safetensors").mean_abs_activation
    assert np.array_equal(stored, batched.stats["ja"].mean_abs_activation.astype(np.float32).astype(np.float64))


def _top_fraction(values: np.ndarray, quantile: float) -> set[tuple[int, int]]:
    """The ceil(q·N) largest values' (layer, index), by sorting (no ties in these arrays)."""
    count = math.ceil(round(quantile * values.size, 9))
    flat = values.ravel()
    cut = np.sort(flat)[::-1][count - 1]
    assert (flat == cut).sum() == 1  # the test's premise: the boundary is not a tie
    return {(int(i) // values.shape[1], int(i) % values.shape[1]) for i in np.flatnonzero(flat >= cut)}


def test_exclude_massive_drops_exactly_the_top_fraction(models, tmp_path, capsys):  # noqa: F811
    path, lm = models("llama")
    out = tmp_path / "o"
    result = identify(settings(k=30, exclude_massive=0.05, output=out), lm=lm, corpus=CORPUS)
    scores = ScoresFile.load(out / "scores-ja.safetensors")
    values = scores.mean_abs_activation
    dropped = _top_fraction(values, 0.05)
    marked = _top_fraction(values, 0.01)
    for t in (1, 2):
        neurons = result.neuron_sets[("ja", t)]
        layers = result.candidate_layers[t]
        kept = [(layer, i) for layer in layers for i in range(values.shape[1]) if (layer, i) not in dropped]
        ranked = sorted((-float(np.float32(scores.scores[t][layer, i])), layer, i) for layer, i in kept)
        assert [(n.layer, n.index) for n in neurons.neurons] == [(a, b) for _, a, b in ranked[:30]]
        extra = neurons.method.extra
        assert extra["exclude_massive"]["quantile"] == 0.05 and extra["exclude_massive"]["count"] == len(dropped)
        assert extra["n_candidates"] == len(layers) * values.shape[1] - sum(1 for x in dropped if x[0] in layers)
        assert extra["massive"]["neurons"] == []  # every top-1 % neuron was excluded
        # the plain run marks the selected neurons that are massive
        plain = identify(settings(k=30), lm=lm, corpus=CORPUS).neuron_sets[("ja", t)]
        expected_marks = [[n.layer, n.index] for n in plain.neurons if (n.layer, n.index) in marked]
        assert plain.method.extra["massive"]["neurons"] == expected_marks
        assert plain.method.extra["massive"]["quantile"] == 0.01 and "exclude_massive" not in plain.method.extra
    # select from the file re-ranks the same way
    picked = tmp_path / "picked.json"
    code, _, err = run_cli(["select", str(out / "scores-ja.safetensors"), "-k", "30", "--exclude-massive", "0.05",
                            "-o", str(picked), "--quiet"], capsys)
    assert code == 0, err
    assert load_neurons(picked).neurons == result.neuron_sets[("ja", 1)].neurons


def test_inspect_shows_the_massive_neurons(models, tmp_path, capsys):  # noqa: F811
    _, lm = models("llama")
    with pytest.warns(TneditWarning, match="exceeds the .* candidate neurons"):  # k above the pool: keep all
        identify(settings(k=200, output=tmp_path), lm=lm, corpus=CORPUS)
    neurons_file = tmp_path / "neurons-ja-type1.json"
    marked = load_neurons(neurons_file).method.extra["massive"]["neurons"]
    assert marked  # 200 of a tiny model's neurons include some of its top 1 %
    code, text, _ = run_cli(["inspect", str(neurons_file), "--top", "200"], capsys)
    assert code == 0
    assert f"massive: {len(marked)} of the {len(load_neurons(neurons_file))} neurons" in text
    assert sum(1 for line in text.splitlines() if line.endswith("  *")) == len(marked)
    code, text, _ = run_cli(["inspect", str(neurons_file), "--top", "200", "--json"], capsys)
    shown = json.loads(text)
    assert shown["n_massive"] == len(marked)
    assert [[n["layer"], n["index"]] for n in shown["top"] if n["massive"]] == marked


def test_resume_keeps_the_mean_abs_activation_bit_identical(models, tmp_path):  # noqa: F811
    _, lm = models("gemma3_text")
    full = identify(settings(output=tmp_path / "full"), lm=lm, corpus=CORPUS)

    class Crash(Exception):
        pass

    def crash(name, done, total):
        if name == "ja:centroids" and done == 2:
            raise Crash

    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        identify(settings(output=out, checkpoint_every=1), lm=lm, corpus=CORPUS, on_batch=crash)
    assert (out / RESUME_DIR / "state.json").is_file()
    resumed = identify(settings(output=out, checkpoint_every=1, resume=True), lm=lm, corpus=CORPUS)
    assert np.array_equal(full.stats["ja"].mean_abs_activation, resumed.stats["ja"].mean_abs_activation)
    for t in (1, 2):
        assert full.neuron_sets[("ja", t)].method.extra == resumed.neuron_sets[("ja", t)].method.extra


def test_old_scores_file_without_the_array(models, tmp_path, capsys):  # noqa: F811
    from safetensors import safe_open
    from safetensors.torch import save_file

    _, lm = models("llama")
    identify(settings(output=tmp_path / "new"), lm=lm, corpus=CORPUS)
    with safe_open(str(tmp_path / "new" / "scores-ja.safetensors"), "pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != "mean_abs_activation"}
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=meta)  # what a release before the array wrote
    scores = ScoresFile.load(old)
    assert scores.mean_abs_activation is None
    neurons = select_from_scores(scores, 1, 10)
    assert "massive" not in neurons.method.extra
    with pytest.raises(InputError, match="mean_abs_activation"):
        select_from_scores(scores, 1, 10, exclude_massive=0.01)
    target = tmp_path / "s.json"
    code, out, err = run_cli(["select", str(old), "--exclude-massive", "0.01", "-o", str(target)], capsys)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "mean_abs_activation" in err
    assert not target.exists()

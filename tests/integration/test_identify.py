"""tnedit identify / select / compare on tiny models: exact scores, centroids, resume, controls, LAPE, η², CLI.

The pure parts (layer parsing, selection, controls, LAPE on toy numbers, η² and p-values) are under
``tests/unit/identify/``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.hostile import run_cli
from tests.support.paths import TATOEBA
from tests.support.sentences import EN, JA, KO
from tests.support.tiny import TINY_TYPES, make_tiny
from tnedit.architectures import decoder_layers, resolve_module
from tnedit.errors import InputError, TneditWarning
from tnedit.formats.neurons import load_neurons
from tnedit.formats.scores import ScoresFile
from tnedit.identify import lape, scoring, stats
from tnedit.identify.controls import random_control
from tnedit.identify.passes import compute_centroids, score_neurons
from tnedit.identify.pipeline import run_identify
from tnedit.identify.resume import RESUME_DIR
from tnedit.identify.scoring import LayerScorer, brute_force_scores
from tnedit.identify.selection import select_from_scores
from tnedit.identify.settings import IdentifySettings
from tnedit.model.loading import load_model
from tnedit.reporting import NullReporter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeCorpus:
    """The corpus API identify uses, over in-memory columns (independent of tnedit.corpus)."""

    def __init__(self, columns: dict[str, list[str]]):
        self.columns = columns
        self.languages = list(columns)
        self.source = "test-corpus"
        self.sha256 = "0" * 64

    def column(self, lang: str) -> list[str]:
        return self.columns[lang]

    def pairs(self, a: str, b: str) -> list[tuple[str, str]]:
        return list(zip(self.columns[a], self.columns[b], strict=True))


CORPUS = FakeCorpus({"en": EN, "ja": JA, "ko": KO})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("identify-models")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            path = make_tiny(name, root)
            cache[name] = (path, load_model(str(path), device="cpu"))
        return cache[name]

    return get


def settings(**kw) -> IdentifySettings:
    base = dict(model="tiny", langs=["ja"], type="both", k=20, batch_size=4)
    base.update(kw)
    return IdentifySettings(**base)


def identify(identify_settings: IdentifySettings, **kw):
    """run_identify without progress bars (warnings still reach :mod:`warnings`)."""
    return run_identify(identify_settings, reporter=NullReporter(), **kw)


# --- independent reference ----------------------------------------------------------------------

# The module whose output is the MLP branch's whole contribution to the residual stream.
BRANCH = {
    "llama": "mlp",
    "gemma3_text": "post_feedforward_layernorm",
    "gpt2": "mlp",
    "gpt_neox": "mlp",
    "cohere": "mlp",
}


def independent_states(lm, sentence: str) -> dict[str, dict[int, torch.Tensor]]:
    """One unpadded sentence; R derived as h − (MLP branch output), s as out_norm(y) / y."""
    model, arch = lm.model, lm.arch
    layers = decoder_layers(model, arch)
    rec: dict[str, dict[int, torch.Tensor]] = {"h": {}, "branch": {}, "a": {}, "y": {}}
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(
            lambda m, a, o, i=i: rec["h"].__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0, -1].double())))
        branch = resolve_module(layer, BRANCH[arch.name])
        handles.append(branch.register_forward_hook(
            lambda m, a, o, i=i: rec["branch"].__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0, -1].double())))
        handles.append(branch.register_forward_pre_hook(
            lambda m, a, i=i: rec["y"].__setitem__(i, a[0][0, -1].double())))
        handles.append(resolve_module(layer, arch.out_proj).register_forward_pre_hook(
            lambda m, a, i=i: rec["a"].__setitem__(i, a[0][0, -1].double())))
    try:
        with torch.no_grad():
            model(**lm.tokenizer(sentence, return_tensors="pt"))
    finally:
        for h in handles:
            h.remove()
    out = {"R": {}, "a": rec["a"], "s": {}, "h": rec["h"]}
    for i in rec["h"]:
        out["R"][i] = rec["h"][i] - rec["branch"][i]
        if arch.out_norm:
            out["s"][i] = rec["branch"][i] / rec["y"][i]
    return out


def brute_scores(lm, sentences, centroids: np.ndarray) -> np.ndarray:
    """mean_s [cos(R + c_i, C) − cos(R, C)] materialising R + c_i for every neuron (fp64)."""
    arch = lm.arch
    out = np.zeros((lm.num_layers, lm.intermediate_size))
    for sentence in sentences:
        st = independent_states(lm, sentence)
        for layer in range(lm.num_layers):
            w = resolve_module(decoder_layers(lm.model, arch)[layer], arch.out_proj).weight.detach().double()
            v = w if arch.layout == "linear" else w.T  # (d, m)
            if arch.out_norm:
                v = v * st["s"][layer].unsqueeze(1)
            c = torch.from_numpy(centroids[layer])
            r = st["R"][layer]
            moved = r.unsqueeze(1) + v * st["a"][layer].unsqueeze(0)  # (d, m): R + c_i
            cos_new = (c @ moved) / (c.norm() * moved.norm(dim=0))
            cos_old = (c @ r) / (c.norm() * r.norm())
            out[layer] += (cos_new - cos_old).numpy()
    return out / len(sentences)


# --- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2", "gpt_neox", "cohere"])
def test_scores_equal_brute_force(models, name):
    _, lm = models(name)
    res = identify(settings(), lm=lm, corpus=CORPUS)
    st = res.stats["ja"]
    for t in (1, 2):
        expected = brute_scores(lm, JA, st.centroids[t])
        np.testing.assert_allclose(st.scores[t], expected, rtol=0, atol=1e-6)
        assert np.abs(expected).max() > 1e-4  # not trivially zero


@pytest.mark.parametrize("name", list(TINY_TYPES))
def test_every_registry_type_scores_exactly(models, name):
    """For every registry type: h = R + Σ_i a_i (s ⊙ v_i) + bias (the score's premise), and identify runs."""
    from tnedit.model.batching import encode_batches
    from tnedit.model.capture import LastTokenCapture

    _, lm = models(name)
    batch = next(encode_batches(lm.tokenizer, JA[:5], 5))
    with LastTokenCapture(lm, ["h", "r", "a"]) as cap:
        st = cap.run(batch)
    with torch.no_grad():
        for layer in range(lm.num_layers):
            proj = lm.out_proj(layer)
            v = proj.weight if lm.arch.layout == "linear" else proj.weight.T
            contrib = st.a[layer].double() @ v.double().T
            if getattr(proj, "bias", None) is not None:
                contrib = contrib + proj.bias.double()
            if layer in st.out_scale:
                contrib = contrib * st.out_scale[layer].double()
            np.testing.assert_allclose((st.h[layer].double() - st.r[layer].double()).numpy(), contrib.numpy(),
                                       atol=2e-6 * float(st.h[layer].abs().max()) + 1e-6)
            scorer = LayerScorer(lm, layer, {1: torch.ones(lm.hidden_size, dtype=torch.float64)})
            scorer.update(st.r[layer], st.a[layer], st.out_scale.get(layer))
            ones = torch.ones(lm.hidden_size)
            ref = brute_force_scores(st.r[layer], st.a[layer], v, ones, st.out_scale.get(layer))
            np.testing.assert_allclose((scorer.sums[1] / scorer.count).numpy(), ref.numpy(), atol=1e-6)
    res = identify(settings(k=10, eta2=False), lm=lm, corpus=CORPUS)
    assert len(res.neuron_sets[("ja", 1)]) == 10 and np.isfinite(res.stats["ja"].scores[1]).all()


def test_half_precision_scores(tmp_path, monkeypatch):
    """bf16 weights: the score still equals the fp64 brute force on the same captured states."""
    from tnedit.model.batching import encode_batches
    from tnedit.model.capture import LastTokenCapture

    lm = load_model(str(make_tiny("gemma3_text", tmp_path, dtype="bfloat16")), device="cpu")
    assert lm.dtype == torch.bfloat16
    batch = next(encode_batches(lm.tokenizer, JA[:6], 6))
    with LastTokenCapture(lm, ["r", "a"]) as cap:
        st = cap.run(batch)
    c = torch.linspace(-1, 1, lm.hidden_size, dtype=torch.float64)
    for layer in range(lm.num_layers):
        scorer = LayerScorer(lm, layer, {2: c})
        scorer.update(st.r[layer], st.a[layer], st.out_scale[layer])
        ref = brute_force_scores(st.r[layer], st.a[layer], lm.out_proj(layer).weight, c, st.out_scale[layer])
        np.testing.assert_allclose((scorer.sums[2] / scorer.count).numpy(), ref.numpy(), atol=1e-8, rtol=1e-4)
    monkeypatch.setattr(scoring, "_room_for", lambda device, nbytes: False)  # no cache of squared weights
    scorer = LayerScorer(lm, 1, {2: c})
    assert scorer.v2 is None
    scorer.update(st.r[1], st.a[1], st.out_scale[1])
    ref = brute_force_scores(st.r[1], st.a[1], lm.out_proj(1).weight, c, st.out_scale[1])
    np.testing.assert_allclose((scorer.sums[2] / scorer.count).numpy(), ref.numpy(), atol=1e-8, rtol=1e-4)
    x = torch.randn(5, lm.hidden_size, dtype=torch.float64)
    w = lm.out_proj(0).weight.detach()
    np.testing.assert_allclose(scoring._matmul(x, w).numpy(), (x @ w.double()).numpy(), rtol=1e-5, atol=1e-6)
    res = identify(settings(k=10), lm=lm, corpus=CORPUS)
    assert res.neuron_sets[("ja", 1)].method.dtype == "bfloat16"


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "gpt2"])
def test_centroids_equal_hand_computation(models, name):
    _, lm = models(name)
    res = identify(settings(), lm=lm, corpus=CORPUS)
    num = lm.num_layers
    last_layer_out = {}
    hook = decoder_layers(lm.model, lm.arch)[num - 1].register_forward_hook(
        lambda m, a, o: last_layer_out.__setitem__("h", (o[0] if isinstance(o, tuple) else o)[0, -1].double()))

    def states(sentence):
        with torch.no_grad():
            out = lm.model(**lm.tokenizer(sentence, return_tensors="pt"), output_hidden_states=True)
        hs = [out.hidden_states[i + 1][0, -1].double() for i in range(num - 1)]  # [-1] is post-norm
        return torch.stack(hs + [last_layer_out["h"]]).numpy()

    try:
        en = np.stack([states(s) for s in EN])
        ja = np.stack([states(s) for s in JA])
    finally:
        hook.remove()
    shared = ((en + ja) / 2).mean(0)
    l2 = ja.mean(0)
    st = res.stats["ja"]
    np.testing.assert_allclose(st.centroids[1], shared, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st.centroids[2], l2, rtol=1e-5, atol=1e-5)


def test_library_passes_match_identify(models):
    _, lm = models("gemma3_text")
    res = identify(settings(), lm=lm, corpus=CORPUS)
    cents = compute_centroids(lm, EN, JA, batch_size=4)
    np.testing.assert_allclose(cents["shared"], res.stats["ja"].centroids[1], atol=1e-9)
    scores = score_neurons(lm, JA, {1: cents["shared"], 2: cents["l2"]}, layers=[1, 3], batch_size=4)
    np.testing.assert_allclose(scores[1][[1, 3]], res.stats["ja"].scores[1][[1, 3]], atol=1e-9)
    assert np.isnan(scores[1][0]).all()


def test_batch_size_invariance(models):
    _, lm = models("llama")
    a = identify(settings(batch_size=1), lm=lm, corpus=CORPUS).stats["ja"]
    b = identify(settings(batch_size=7), lm=lm, corpus=CORPUS).stats["ja"]
    for t in (1, 2):
        np.testing.assert_allclose(a.scores[t], b.scores[t], rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.centroids[t], b.centroids[t], rtol=1e-5, atol=1e-5)


def test_determinism(models):
    _, lm = models("gpt2")
    a = identify(settings(), lm=lm, corpus=CORPUS)
    b = identify(settings(), lm=lm, corpus=CORPUS)
    for t in (1, 2):
        assert np.array_equal(a.stats["ja"].scores[t], b.stats["ja"].scores[t])
        assert a.neuron_sets[("ja", t)].to_dict() == b.neuron_sets[("ja", t)].to_dict()


def test_type_selection_and_layers(models):
    _, lm = models("llama")
    res = identify(settings(type=1, k=30), lm=lm, corpus=CORPUS)
    ns = res.neuron_sets[("ja", 1)]
    assert list(res.neuron_sets) == [("ja", 1)]
    assert len(ns) == 30 and ns.method.layers == [0, 1, 2]  # round(0.625 * 4) = 3 (half up)
    assert {n.layer for n in ns.neurons} <= {0, 1, 2}
    scores = [n.score for n in ns.neurons]
    assert scores == sorted(scores, reverse=True)
    # globally ranked: the k-th best score of the candidate layers is the cut-off
    flat = np.sort(res.stats["ja"].scores[1][:3].astype(np.float32).ravel())[::-1]
    assert scores[-1] == pytest.approx(float(flat[29]))
    res2 = identify(settings(type=2, k=10, layers="1,3"), lm=lm, corpus=CORPUS)
    assert {n.layer for n in res2.neuron_sets[("ja", 2)].neurons} <= {1, 3}
    # the other type's scores come free from the same passes
    np.testing.assert_allclose(res2.scores("ja", 1), res.scores("ja", 1), atol=1e-12)
    assert list(res2.neuron_sets) == [("ja", 2)]


def test_k_larger_than_candidates_is_capped_with_warning(models):
    _, lm = models("llama")
    with pytest.warns(TneditWarning, match="exceeds the 64 candidate"):
        res = identify(settings(type=2, k=5000), lm=lm, corpus=CORPUS)
    assert len(res.neuron_sets[("ja", 2)]) == 64  # Type-2 of 4 layers = layer 3 only


def test_two_languages_share_english_pass(models):
    _, lm = models("llama")
    calls = []
    res = identify(settings(langs=["ja", "ko"]), lm=lm, corpus=CORPUS,
                       on_batch=lambda name, done, total: calls.append(name))
    single = identify(settings(langs=["ko"]), lm=lm, corpus=CORPUS)
    assert set(res.neuron_sets) == {("ja", 1), ("ja", 2), ("ko", 1), ("ko", 2)}
    # ko's centroid pass reuses ja's English sums: it runs over the 12 ko sentences only
    assert calls.count("ko:centroids") == 3 and calls.count("ja:centroids") == 6
    np.testing.assert_allclose(res.stats["ko"].scores[1], single.stats["ko"].scores[1], atol=1e-6)


# --- outputs, select, resume --------------------------------------------------------------------


def test_outputs_and_select_equal_identify(models, tmp_path):
    _, lm = models("gemma3_text")
    out = tmp_path / "out"
    res = identify(settings(output=out, k=25), lm=lm, corpus=CORPUS)
    assert sorted(p.name for p in out.iterdir()) == ["neurons-ja-type1.json", "neurons-ja-type2.json",
                                                      "scores-ja.safetensors"]
    ns = load_neurons(out / "neurons-ja-type1.json")
    assert ns.method.kind == "transfer" and ns.method.type == 1 and ns.method.language == "ja"
    assert ns.method.k == 25 and ns.method.position == "last" and ns.method.dtype == "float32"
    assert ns.method.data["n_pairs"] == 12 and ns.method.data["sha256"] == CORPUS.sha256
    assert ns.model.fingerprint == lm.fingerprint() and ns.method.tokenizer["adds_bos"] is True
    assert len(ns.method.extra["eta2"]) == 25 and 0 <= ns.method.extra["eta2_share"] <= 1
    sf = ScoresFile.load(out / "scores-ja.safetensors")
    assert sf.scores[1].shape == (4, 64) and sf.candidate_layers == {1: [0, 1, 2], 2: [3]}
    assert sf.language == "ja" and sf.model.name_or_path == lm.name_or_path
    for t in (1, 2):
        again = select_from_scores(sf, t, 25)
        assert [n.key for n in again.neurons] == [n.key for n in res.neuron_sets[("ja", t)].neurons]
        assert again.to_dict() == res.neuron_sets[("ja", t)].to_dict()
        assert again.sha256() == load_neurons(out / f"neurons-ja-type{t}.json").sha256()
    assert res.set_files[("ja", 1)] == out / "neurons-ja-type1.json"
    smaller = select_from_scores(sf, 1, 10)
    assert [n.key for n in smaller.neurons] == [n.key for n in res.neuron_sets[("ja", 1)].neurons[:10]]
    other = select_from_scores(sf, 1, 10, layers="3")
    assert {n.layer for n in other.neurons} == {3}
    with pytest.raises(InputError, match="type 3"):
        select_from_scores(sf, 3, 10)


@pytest.mark.parametrize("stop_in", ["ja:centroids", "ja:scores", "ko:scores"])
def test_resume_equals_uninterrupted(models, tmp_path, stop_in):
    _, lm = models("gemma3_text")
    full = identify(settings(langs=["ja", "ko"], output=tmp_path / "full"), lm=lm, corpus=CORPUS)

    class Crash(Exception):
        pass

    def crash(name, done, total):
        if name == stop_in and done == 2:
            raise Crash

    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        identify(settings(langs=["ja", "ko"], output=out, checkpoint_every=1), lm=lm, corpus=CORPUS, on_batch=crash)
    state = json.loads((out / RESUME_DIR / "state.json").read_text())
    assert state["current"] == stop_in and state["batches_done"] == 2
    seen = []
    resumed = identify(settings(langs=["ja", "ko"], output=out, checkpoint_every=1, resume=True), lm=lm,
                           corpus=CORPUS, on_batch=lambda n, d, t: seen.append((n, d)))
    assert (stop_in, 1) not in seen and (stop_in, 3) in seen  # batches 1-2 were not recomputed
    for lang in ("ja", "ko"):
        for t in (1, 2):
            assert np.array_equal(full.stats[lang].scores[t], resumed.stats[lang].scores[t])
            assert (full.neuron_sets[(lang, t)].neurons == resumed.neuron_sets[(lang, t)].neurons)
    assert not (out / RESUME_DIR).exists()  # cleaned up after success


def test_resume_with_other_settings_is_refused(models, tmp_path):
    _, lm = models("llama")

    def crash(name, done, total):
        raise KeyboardInterrupt

    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        identify(settings(output=out, checkpoint_every=1), lm=lm, corpus=CORPUS, on_batch=crash)
    with pytest.raises(InputError, match="batch_size"):
        identify(settings(output=out, batch_size=5, resume=True), lm=lm, corpus=CORPUS)
    with pytest.warns(TneditWarning, match="no checkpoint"):
        identify(settings(output=tmp_path / "fresh", resume=True), lm=lm, corpus=CORPUS)


# --- LAPE and η² on a tiny model ----------------------------------------------------------------


def test_activation_probabilities_count_real_tokens(models):
    _, lm = models("llama")
    counts = lape.activation_probabilities(lm, {"en": EN[:5], "ja": JA[:5]}, [1], batch_size=3)
    probs, tokens = counts.probs, counts.tokens
    assert counts.truncated == {"en": 0, "ja": 0} and counts.max_length == 128  # max_position_embeddings
    acts = []
    act_mod = lm.layer_module(1, lm.arch.act)
    hook = act_mod.register_forward_hook(lambda m, a, o: acts.append(o[0]))
    try:
        for s in EN[:5]:
            with torch.no_grad():
                lm.model(**lm.tokenizer(s, return_tensors="pt"))
    finally:
        hook.remove()
    x = torch.cat([a[1:] for a in acts])  # drop <bos>
    assert tokens["en"] == x.shape[0]
    np.testing.assert_allclose(probs[0, :, 0], (x > 0).double().mean(0).numpy())


def test_eta2_in_identify_equals_hand(models):
    _, lm = models("gpt2")
    res = identify(settings(type=1, k=15), lm=lm, corpus=CORPUS)
    acts = np.stack([independent_states(lm, s)["a"][1].numpy() for s in EN + JA])
    labels = [0] * len(EN) + [1] * len(JA)
    expected = stats.eta_squared(acts, labels)
    np.testing.assert_allclose(res.stats["ja"].eta2[1], expected, atol=1e-6)
    ns = res.neuron_sets[("ja", 1)]
    per = np.array([res.stats["ja"].eta2[n.layer, n.index] for n in ns.neurons])
    p = stats.f_test_pvalue(per, 24)
    assert ns.method.extra["eta2_share"] == pytest.approx(float(np.mean((per > 0.1) & (p < 0.05))), abs=1e-6)


# --- data errors (tnedit.corpus) ----------------------------------------------------------------


def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]) + "\n", encoding="utf-8")
    return path


def test_bad_inputs_raise_input_errors(models, tmp_path):
    pytest.importorskip("tnedit.corpus")
    path, lm = models("llama")
    good = _tsv(tmp_path / "good.tsv", ["en", "ja"], [list(r) for r in zip(EN, JA, strict=True)])

    def run(**kw):
        return identify(settings(model=str(path), **kw), lm=lm)

    with pytest.raises(InputError, match="ko"):
        run(data=str(good), langs=["ko"])  # missing language column
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="empty.tsv"):
        run(data=str(empty))
    few = _tsv(tmp_path / "few.tsv", ["en", "ja"], [list(r) for r in zip(EN[:4], JA[:4], strict=True)])
    with pytest.raises(InputError, match="few.tsv"):
        run(data=str(few))
    with pytest.raises(InputError, match="shared language"):
        run(data=str(good), langs=["en"])
    with pytest.raises(InputError, match="--k"):
        run(data=str(good), k=0)
    with pytest.raises(InputError, match="--batch-size"):
        run(data=str(good), batch_size=0)
    with pytest.raises(InputError, match="-o"):
        run(data=str(good), checkpoint_every=2)
    res = run(data=str(good), k=5)
    assert res.neuron_sets[("ja", 1)].method.data["source"]


def test_sentences_that_tokenize_to_nothing(models, tmp_path):
    pytest.importorskip("tnedit.corpus")
    path, lm = models("llama")
    rows = [list(r) for r in zip(EN, JA, strict=True)]
    rows[3][1] = "\u200b"  # the tiny tokenizer's normalizer deletes zero-width spaces
    bad = _tsv(tmp_path / "blank.tsv", ["en", "ja"], rows)
    with pytest.raises(InputError, match=r"blank.tsv.*zero tokens.*'ja'.*row\(s\) 4"):
        identify(settings(model=str(path), data=str(bad)), lm=lm)
    rows = [list(r) for r in zip(EN, JA, strict=True)]
    rows[6] = rows[6][:1]  # a row without its Japanese half
    ragged = _tsv(tmp_path / "ragged.tsv", ["en", "ja"], rows)
    with pytest.raises(InputError, match="ragged.tsv, line 8"):
        identify(settings(model=str(path), data=str(ragged)), lm=lm)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"en": e}) for e in EN) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="pairs.jsonl, line 1: missing key 'ja'"):
        identify(settings(model=str(path), data=str(jsonl)), lm=lm)


# --- CLI ----------------------------------------------------------------------------------------


def _cli(args: list[str], capsys) -> str:
    """``tnedit ARGS`` through tests.support.hostile.run_cli; its stdout (exit 0 asserted)."""
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    return out


def test_cli_identify_select_compare_control_lape(models, tmp_path, capsys):
    pytest.importorskip("tnedit.corpus")
    path, _ = models("llama")
    data = _tsv(tmp_path / "d.tsv", ["en", "ja", "ko"], [list(r) for r in zip(EN, JA, KO, strict=True)])
    out = tmp_path / "out"
    r = _cli(["identify", str(path), "--data", str(data), "--lang", "ja,ko", "--type", "both", "--k", "12",
              "--batch-size", "5", "--dtype", "float32", "--device", "cpu", "-o", str(out), "--quiet", "--json"],
             capsys)
    summary = json.loads(r)
    assert {(s["language"], s["type"]) for s in summary["sets"]} == {("ja", 1), ("ja", 2), ("ko", 1), ("ko", 2)}
    assert (out / "neurons-ko-type2.json").is_file() and (out / "scores-ko.safetensors").is_file()

    r = _cli(["select", str(out / "scores-ja.safetensors"), "--type", "1", "--k", "12", "-o", str(tmp_path / "s.json"),
              "--json"], capsys)
    assert json.loads(r)["k"] == 12
    assert load_neurons(tmp_path / "s.json").neurons == load_neurons(out / "neurons-ja-type1.json").neurons
    code, _, err = run_cli(["select", str(out / "scores-ja.safetensors"), "--type", "2", "--k", "999",
                            "-o", str(tmp_path / "c.json")], capsys)
    assert code == 0 and "warning" in err and len(load_neurons(tmp_path / "c.json")) == 64

    r = _cli(["identify", str(path), "--control", "random", "--like", str(out / "neurons-ja-type1.json"),
              "--seed", "42", "-o", str(tmp_path / "ctrl.json"), "--json"], capsys)
    ctrl = load_neurons(tmp_path / "ctrl.json")
    ref = load_neurons(out / "neurons-ja-type1.json")
    assert len(ctrl) == 12 and not (ctrl.keys() & ref.keys()) and ctrl.model.fingerprint == ref.model.fingerprint

    r = _cli(["compare", str(out / "neurons-ja-type1.json"), str(tmp_path / "s.json"), "--json"], capsys)
    assert json.loads(r)["jaccard"] == 1.0
    r = _cli(["compare", str(out / "neurons-ja-type1.json"), str(tmp_path / "ctrl.json")], capsys)
    assert "Jaccard = 0.0000" in r and "layer" in r

    r = _cli(["identify", str(path), "--method", "lape", "--langs", "en,ja,ko", "--data", str(data), "--device", "cpu",
              "-o", str(tmp_path / "lape"), "--quiet", "--json"], capsys)
    assert {s["language"] for s in json.loads(r)["sets"]} == {"en", "ja", "ko"}
    lape_set = load_neurons(tmp_path / "lape" / "neurons-ja-lape.json")
    assert lape_set.method.kind == "lape" and lape_set.method.languages == ["en", "ja", "ko"]


def test_cli_errors_are_one_line(models, tmp_path, capsys):
    pytest.importorskip("tnedit.corpus")
    path, _ = models("llama")
    data = _tsv(tmp_path / "d.tsv", ["en", "ja"], [list(r) for r in zip(EN, JA, strict=True)])
    code, _, err = run_cli(["identify", str(path), "--data", str(data), "--lang", "ko", "--device", "cpu",
                            "-o", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 2
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tnedit: error:") and "ko" in err[0]
    code, _, err = run_cli(["select", str(tmp_path / "missing.safetensors")], capsys)
    assert code == 2 and "missing.safetensors" in err


# --- the real model -----------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.slow
def test_real_gemma_type1_beats_random_control(tmp_path):
    """Zeroing the top Type-1 neurons lowers mid-layer en–ja similarity more than random ones do."""
    from tests.support.models import real_model_dir
    from tnedit.evaluate.generation import last_token_states

    model_dir = real_model_dir("gemma3-270m")
    tsv = TATOEBA / "en-ja.train.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} not found")
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()[1:]]
    train, held = rows[:100], rows[900:940]
    lm = load_model(str(model_dir), dtype="float32", device="cpu")
    corpus = FakeCorpus({"en": [r[0] for r in train], "ja": [r[1].strip() for r in train]})
    res = identify(settings(model=str(model_dir), type=1, k=100, batch_size=16), lm=lm, corpus=corpus)
    top = res.neuron_sets[("ja", 1)]
    ctrl = random_control(top, lm.num_layers, lm.intermediate_size, seed=0)
    en = last_token_states(lm, [r[0] for r in held])
    ja = [r[1].strip() for r in held]
    mid = list(range(lm.num_layers // 4, (3 * lm.num_layers) // 4))

    def mid_cosine(neurons):  # the edit acts on the Japanese side only, at the last token
        cos = torch.nn.functional.cosine_similarity(en, last_token_states(lm, ja, neurons), dim=-1).mean(0)
        return float(cos[mid].mean())

    base, edited, control = mid_cosine(None), mid_cosine(top), mid_cosine(ctrl)
    assert base - edited > base - control
    assert base - edited > 0

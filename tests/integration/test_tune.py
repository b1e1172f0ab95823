"""``tnedit tune`` on tiny models: its measurements against independent ones, its bound, determinism, resume.

The references are independent of the probe: perplexities come from the baked weights
(:func:`tnedit.edit.runtime.apply_to_model`, what ``tnedit apply`` writes), one unpadded sentence per
forward and a full log-softmax; attributions are compared with central finite differences.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.hostile import run_cli
from tests.support.tiny import make_tiny
from tnedit.edit.runtime import apply_to_model
from tnedit.formats.neurons import load_neurons
from tnedit.model.loading import load_model
from tnedit.tune import refine
from tnedit.tune.data import load_tune_data
from tnedit.tune.pipeline import run_tune
from tnedit.tune.probe import Probe, encode_calibration, identity_factors
from tnedit.tune.settings import TuneSettings
from tnedit.tune.state import STATE_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTENCES = ["The cat sits on the mat.", "I like tea.", "Where is the station? It is over there.", "Hi",
             "We will leave the house tomorrow morning.", "猫がマットの上に座っている。", "駅はどこですか。"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tune-models")
    return {name: make_tiny(name, root) for name in ("llama", "gemma3_text", "gpt2", "gpt_neox")}


def brute_nll(model, tokenizer, sentences) -> float:
    """Mean next-token NLL in float64, one unpadded sentence per forward."""
    total, count = 0.0, 0
    with torch.no_grad():
        for sentence in sentences:
            ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
            logp = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
            total += float(-logp.gather(-1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    return total / count


def _factors(lm, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    factors = identity_factors(lm)
    for _ in range(12):
        factors[rng.integers(lm.num_layers), rng.integers(lm.intermediate_size)] = rng.choice([0.0, -0.5, 0.3])
    return factors


def _neurons_of(factors: np.ndarray):
    from tnedit.formats.neurons import Neuron

    layers, indices = np.nonzero(factors != 1.0)
    return [Neuron(int(a), int(b), None, float(factors[a, b])) for a, b in zip(layers, indices, strict=True)]


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_probe_loss_equals_the_baked_model(tiny, name, batch_size):
    lm = load_model(str(tiny[name]))
    factors = _factors(lm)
    probe = Probe(lm)
    texts = encode_calibration(lm, "mixed", SENTENCES, batch_size, 64)
    measured = probe.loss(texts, factors)
    unedited = probe.loss(texts, identity_factors(lm))
    assert unedited == pytest.approx(brute_nll(lm.model, lm.tokenizer, SENTENCES), rel=1e-5)
    handle = apply_to_model(lm.model, _neurons_of(factors), op="scale", factor=1.0)
    try:
        assert measured == pytest.approx(brute_nll(lm.model, lm.tokenizer, SENTENCES), rel=1e-5)
    finally:
        handle.restore()
    assert measured != pytest.approx(unedited, rel=1e-7)  # the edit changed something to compare


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox"])  # norms that stay in float64 (Llama's RMSNorm runs in float32)
def test_attribution_equals_finite_differences(tiny, name):
    lm = load_model(str(tiny[name]))
    lm.model.double()
    probe = Probe(lm)
    texts = encode_calibration(lm, "mixed", SENTENCES, 3, 64)
    factors = _factors(lm, seed=1).astype(np.float64)
    loss, grads = probe.attribution(texts, factors)
    assert loss == pytest.approx(probe.loss(texts, factors), rel=1e-12)
    edited = list(zip(*np.nonzero(factors != 1.0), strict=True))[:3]
    largest = [divmod(int(i), grads.shape[1]) for i in np.argsort(-np.abs(grads), axis=None)[:3]]
    step = 1e-3
    for layer, index in [*edited, *largest]:
        up, down = factors.copy(), factors.copy()
        up[layer, index] += step
        down[layer, index] -= step
        numeric = (probe.loss(texts, up) - probe.loss(texts, down)) / (2 * step)
        assert grads[layer, index] == pytest.approx(numeric, rel=1e-6), (layer, index)


def _settings(model: Path, out: Path, **changes) -> TuneSettings:
    base = TuneSettings(model=str(model), lang="ja", keep=["en", "ko"], max_neurons=24, max_ppl_increase=0.01,
                        calibration=24, validation=24, rounds=4, trials=5, pool=64, batch_size=8, output=str(out))
    return replace(base, **changes)


@pytest.fixture(scope="module")
def tuned(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "out"
    settings = _settings(tiny["llama"], out)
    return settings, run_tune(settings)


def _ratios_from_baked(settings: TuneSettings, split: str) -> dict[str, float]:
    data = load_tune_data(settings)
    sentences = getattr(data, split)
    lm = load_model(settings.model)
    before = {lang: brute_nll(lm.model, lm.tokenizer, s) for lang, s in sentences.items()}
    neuron_set = load_neurons(Path(settings.output) / "neurons-ja-selective.json")
    apply_to_model(lm.model, neuron_set, op="zero")
    return {lang: math.exp(brute_nll(lm.model, lm.tokenizer, s) - before[lang]) for lang, s in sentences.items()}


def test_the_chosen_set_keeps_the_bound_it_was_given(tuned):
    settings, result = tuned
    neuron_set = load_neurons(Path(settings.output) / "neurons-ja-selective.json")
    assert 1 <= len(neuron_set) <= settings.max_neurons
    calibration = _ratios_from_baked(settings, "calibration")
    validation = _ratios_from_baked(settings, "validation")
    for lang in ("en", "ko"):
        assert calibration[lang] - 1 <= settings.calibration_budget() + 1e-6
        assert validation[lang] - 1 <= settings.validation_budget() + 1e-6
        assert calibration[lang] == pytest.approx(result.chosen.kept_ratios[lang], rel=1e-5)
    assert calibration["ja"] == pytest.approx(result.chosen.target_ratio, rel=1e-5)
    assert calibration["ja"] > 1.0  # it broke something
    recorded = neuron_set.method.extra["tune"]["calibration"]
    assert recorded["kept_ratios"] == pytest.approx({lang: calibration[lang] for lang in ("en", "ko")}, rel=1e-5)
    assert neuron_set.method.kind == "tune" and neuron_set.method.languages == ["ja", "en", "ko"]


def test_the_front_holds_every_point_and_no_point_beats_a_front_point(tuned):
    settings, result = tuned
    front = json.loads((Path(settings.output) / "front-ja.json").read_text())
    points = front["points"]
    assert [p["label"] for p in points] == [p.measurement.label for p in result.points]
    assert sum(p["stage"] == "trial" for p in points) == settings.trials
    assert 2 <= sum(p["stage"] == "greedy" for p in points) <= settings.rounds + 1
    for p in points:  # every point's set is a prefix of the recorded greedy order
        assert p["prefix"] <= len(front["order"])
    for p in points:
        beaten = any(q["target_ratio"] >= p["target_ratio"] and q["worst_kept_ratio"] <= p["worst_kept_ratio"]
                     and (q["target_ratio"] > p["target_ratio"] or q["worst_kept_ratio"] < p["worst_kept_ratio"])
                     for q in points)
        assert p["on_front"] == (not beaten)
    chosen = next(p for p in points if p["label"] == front["chosen"])
    better = [p for p in points if p["feasible"] and p["prefix"] > 0 and p["target_ratio"] > chosen["target_ratio"]]
    assert all(p["validation"] is not None for p in better)  # a better calibration point lost on validation
    assert (Path(settings.output) / "front-ja.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (Path(settings.output) / STATE_DIR).exists()


def test_the_same_seed_gives_the_same_files(tuned, tmp_path):
    settings, _ = tuned
    again = replace(settings, output=str(tmp_path / "again"))
    run_tune(again)
    for name in ("neurons-ja-selective.json", "front-ja.json"):
        first = (Path(settings.output) / name).read_text().replace(str(settings.output), "OUT")
        second = (tmp_path / "again" / name).read_text().replace(str(again.output), "OUT")
        assert first == second, name


def test_an_interrupted_search_resumes_to_the_same_result(tuned, tmp_path, monkeypatch):
    settings, _ = tuned
    out = tmp_path / "resumed"
    resumed = replace(settings, output=str(out))
    calls = {"n": 0}
    real = refine.measure

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(refine, "measure", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_tune(resumed)
    assert (out / STATE_DIR / "state.json").is_file()
    assert not (out / "neurons-ja-selective.json").exists()
    monkeypatch.setattr(refine, "measure", real)
    run_tune(replace(resumed, resume=True))
    for name in ("neurons-ja-selective.json", "front-ja.json"):
        assert (out / name).read_text() == (Path(settings.output) / name).read_text()


def test_resume_refuses_a_state_of_other_settings(tuned, tmp_path, monkeypatch):
    settings, _ = tuned
    out = tmp_path / "other"
    monkeypatch.setattr(refine, "measure", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_tune(replace(settings, output=str(out)))
    from tnedit.errors import InputError

    with pytest.raises(InputError, match="max_neurons"):
        run_tune(replace(settings, output=str(out), resume=True, max_neurons=10))


def test_cli_json_names_the_chosen_set(tiny, tmp_path, capsys):
    out = tmp_path / "cli"
    code, stdout, stderr = run_cli(["tune", str(tiny["llama"]), "--lang", "ja", "--keep", "en", "--max-neurons", "8",
                                    "--max-ppl-increase", "0.01", "--calibration", "16", "--validation", "16",
                                    "--rounds", "2", "--trials", "2", "--pool", "32", "--quiet", "--json",
                                    "-o", str(out)], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert Path(result["neurons"]) == out / "neurons-ja-selective.json"
    assert len(load_neurons(result["neurons"])) == result["n_neurons"] <= 8
    code, stdout, _ = run_cli(["tune", str(tiny["llama"]), "--lang", "ja", "--keep", "en", "--max-neurons", "8",
                               "--max-ppl-increase", "0.01", "--calibration", "16", "--validation", "16",
                               "--rounds", "2", "--trials", "2", "--pool", "32", "--quiet", "-o", str(out)], capsys)
    assert code == 0 and "neurons:" in stdout and "validation:" in stdout


def test_inspect_shows_what_tune_measured(tuned, capsys):
    settings, result = tuned
    path = Path(settings.output) / "neurons-ja-selective.json"
    code, stdout, err = run_cli(["inspect", str(path), "--top", "3"], capsys)
    assert code == 0, err
    (line,) = [line for line in stdout.splitlines() if line.startswith("tune:")]
    assert "keep en,ko within +1%" in line
    assert f"en ×{result.chosen.kept_ratios['en']:.4g}" in line and "validation ja ×" in line
    factors = {n.factor for n in load_neurons(path).neurons}
    assert ("factor" in stdout.splitlines()[-4]) == (factors != {None})

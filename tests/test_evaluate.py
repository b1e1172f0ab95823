"""tnedit evaluate: metrics against hand computations, the runner on tiny models, reports, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tnedit.evaluate import answers, langid, metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- metrics vs hand computations ---------------------------------------------------------------


def test_row_and_pair_cosine():
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    y = np.array([[0.0, 3.0], [2.0, 2.0], [0.0, -1.0]])
    assert metrics.row_cosines(x, y).tolist() == pytest.approx([0.0, 1.0, -1.0])
    assert metrics.mean_pair_cosine(x, y) == pytest.approx(0.0)
    y2 = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert metrics.mean_pair_cosine(x, y2) == pytest.approx((1 / math.sqrt(2) + 1 / math.sqrt(2) + 1) / 3)


def test_derangement_and_nonparallel_floor():
    for n in (2, 3, 10, 200):
        perm = metrics.derangement(n, seed=42)
        assert sorted(perm.tolist()) == list(range(n))
        assert not np.any(perm == np.arange(n))
    assert metrics.derangement(50, 7).tolist() == metrics.derangement(50, 7).tolist()
    assert metrics.derangement(50, 7).tolist() != metrics.derangement(50, 8).tolist()
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    perm = np.array([1, 2, 0])  # pairs (x0,y1) (x1,y2) (x2,y0)
    hand = (0.0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3
    assert metrics.nonparallel_cosine(x, y, perm) == pytest.approx(hand)
    assert metrics.mean_pair_cosine(x, y) == pytest.approx(1.0)


def test_mutual_knn_hand():
    # Points on a line: neighbours are unambiguous.
    x = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, 0.3], [0.0, 1.0]])
    # knn_x with k=1: 0->1, 1->0, 2->1, 3->2
    assert metrics.knn_indices(x, 1)[:, 0].tolist() == [1, 0, 1, 2]
    y = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.05]])
    # knn_y with k=1: 0->3, 1->2, 2->1, 3->0
    assert metrics.knn_indices(y, 1)[:, 0].tolist() == [3, 2, 1, 0]
    assert metrics.mutual_knn(x, y, k=1) == pytest.approx(1 / 4)  # only point 2 agrees (neighbour 1 in both)
    assert metrics.mutual_knn(x, x, k=1) == pytest.approx(1.0)
    kx = [set(r) for r in metrics.knn_indices(x, 2).tolist()]
    ky = [set(r) for r in metrics.knn_indices(y, 2).tolist()]
    assert kx == [{1, 2}, {0, 2}, {0, 1}, {1, 2}]
    assert ky == [{3, 2}, {2, 3}, {1, 3}, {0, 2}]
    hand = (1 + 1 + 1 + 1) / 4 / 2  # each point shares one of its two neighbours
    assert metrics.mutual_knn(x, y, k=2) == pytest.approx(hand)
    # self is never its own neighbour, and scaling rows changes nothing (L2-normalised)
    assert metrics.mutual_knn(x * np.array([[1.0], [5.0], [0.2], [3.0]]), x, k=2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.mutual_knn(x, y, k=4)


def test_centroid_cosine_and_matrix():
    x = np.array([[1.0, 0.0], [1.0, 2.0]])  # centroid (1, 1)
    y = np.array([[2.0, 0.0], [0.0, 0.0]])  # centroid (1, 0)
    assert metrics.centroid_cosine(x, y) == pytest.approx(1 / math.sqrt(2))
    mat = metrics.centroid_cosine_matrix([x, y, -x])
    assert mat.shape == (3, 3)
    assert np.diag(mat) == pytest.approx([1, 1, 1])
    assert mat[0, 1] == pytest.approx(1 / math.sqrt(2))
    assert mat[0, 2] == pytest.approx(-1.0)
    assert mat[1, 0] == pytest.approx(mat[0, 1])


def test_pca_2d_hand():
    # Variance along x (4 points ±2) and y (±1), none along z.
    x = np.array([[2.0, 0.0, 5.0], [-2.0, 0.0, 5.0], [0.0, 1.0, 5.0], [0.0, -1.0, 5.0]])
    coords, ratio = metrics.pca_2d(x)
    assert coords[:, 0].tolist() == pytest.approx([2, -2, 0, 0])
    assert coords[:, 1].tolist() == pytest.approx([0, 0, 1, -1])
    assert ratio.tolist() == pytest.approx([8 / 10, 2 / 10])
    coords2, _ = metrics.pca_2d(-x)  # sign convention makes the result deterministic
    assert np.allclose(np.abs(coords2), np.abs(coords))


def test_mid_layers():
    assert metrics.mid_layers(18) == [6, 7, 8, 9, 10, 11]
    assert metrics.mid_layers(32) == list(range(10, 21))
    assert metrics.mid_layers(4) == [1]
    assert metrics.mid_layers(1) == [0]


def test_next_token_nll_and_perplexity_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]]))
    ids = torch.tensor([[0, 1, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # last position is padding
    nll, n = metrics.next_token_nll(metrics.real_logprobs(logits, mask), ids, mask)
    # targets: ids[1]=1 under row 0 (0.25), ids[2]=2 under row 1 (0.1); the BOS at 0 is never a target
    assert n == 2
    assert nll == pytest.approx(-math.log(0.25) - math.log(0.1), rel=1e-6)
    assert metrics.perplexity(nll, n) == pytest.approx(math.exp(nll / 2))
    left = torch.tensor([[0, 1, 1, 1]])  # left padding: targets ids[2] under row 1, ids[3] under row 2
    nll2, n2 = metrics.next_token_nll(metrics.real_logprobs(logits, left), ids, left)
    assert n2 == 2
    assert nll2 == pytest.approx(-math.log(0.1) - math.log(0.2), rel=1e-6)
    assert math.isnan(metrics.perplexity(0.0, 0))


def test_kl_and_top1_hand():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    q = torch.tensor([[0.25, 0.75], [0.9, 0.1]])
    kl = metrics.kl_divergence(p.log(), q.log())
    hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl.tolist() == pytest.approx([hand, 0.0], abs=1e-7)
    assert metrics.top1_agreement(p.log(), q.log()).tolist() == [False, True]  # a tie picks the first token
    p2, q2 = torch.tensor([[0.6, 0.4]]), torch.tensor([[0.4, 0.6]])
    assert metrics.top1_agreement(p2.log(), q2.log()).tolist() == [False]
    same = torch.log_softmax(torch.randn(5, 11), -1)
    assert torch.equal(metrics.kl_divergence(same, same.clone()), torch.zeros(5, dtype=torch.float64))


def test_topk_bucket_kl_is_exact_for_full_k_and_a_lower_bound_otherwise():
    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(6, 50) * 2, -1)
    logq = torch.log_softmax(torch.randn(6, 50) * 2, -1)
    exact = metrics.kl_divergence(logp, logq)
    idx, top = metrics.topk_logprobs(logp, 50)
    assert torch.allclose(metrics.kl_from_topk(idx, top, logq), exact, atol=1e-6)
    idx, top = metrics.topk_logprobs(logp, 5)
    approx = metrics.kl_from_topk(idx, top, logq)
    assert torch.all(approx <= exact + 1e-9)
    assert torch.all(approx >= -1e-9)
    # hand: P = (0.5, 0.3, 0.2), Q = (0.2, 0.5, 0.3); top-1 of P + rest bucket
    p, q = torch.tensor([[0.5, 0.3, 0.2]]).log(), torch.tensor([[0.2, 0.5, 0.3]]).log()
    idx, top = metrics.topk_logprobs(p, 1)
    hand = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert metrics.kl_from_topk(idx, top, q).item() == pytest.approx(hand)
    assert metrics.top1_from_topk(idx, q).tolist() == [False]


def test_qa_f1_em_squad_style():
    assert answers.normalize_answer("The  Eiffel Tower!", "en") == "eiffel tower"
    assert answers.exact_match("the Eiffel tower.", "Eiffel Tower", "en") == 1.0
    # pred tokens {paris, france}, gold {paris}: P = 1/2, R = 1 → F1 = 2/3
    assert answers.token_f1("Paris, France", "Paris", "en") == pytest.approx(2 / 3)
    assert answers.token_f1("London", "Paris", "en") == 0.0
    assert answers.qa_scores("Paris", ["Lyon", "paris"], "en") == (1.0, 1.0)
    assert answers.token_f1("", "", "en") == 1.0
    assert answers.token_f1("", "x", "en") == 0.0


def test_qa_f1_cjk_per_character():
    assert answers.answer_tokens("東京都です。", "ja") == ["東", "京", "都", "で", "す"]
    assert answers.answer_tokens("富士山 3776m", "ja") == ["富", "士", "山", "3776m"]
    # pred 東京都 vs gold 東京: common 2, P = 2/3, R = 1 → F1 = 0.8
    assert answers.token_f1("東京都", "東京", "ja") == pytest.approx(0.8)
    assert answers.exact_match("東京。", "東京", "ja") == 1.0
    assert answers.token_f1("서울입니다", "서울", "ko") == pytest.approx(2 * (2 / 5) * 1 / (2 / 5 + 1))
    assert answers.token_f1("北京", "北京市", "zh") == pytest.approx(0.8)
    # without per-character splitting the same pair would score 0
    assert answers.token_f1("東京都", "東京", "en") == 0.0


def test_script_language_id():
    cases = {
        "私は学生です。": "ja",
        "カタカナ": "ja",
        "我是学生。": "zh",
        "저는 학생입니다.": "ko",
        "Я студент.": "ru",
        "The cat is on the mat and it is happy.": "en",
        "Le chat est sur la table et il dort.": "fr",
        "Die Katze ist nicht auf dem Tisch.": "de",
        "El gato está en la mesa y no duerme.": "es",
        "Il gatto è sul tavolo e non dorme.": "it",
        "De kat is niet op de tafel, het slaapt.": "nl",
        "1234 !!": None,
        "xyzzy": "latin",
        "مرحبا": "other",
    }
    for text, lang in cases.items():
        assert langid.identify_language(text) == lang, text
    counts = langid.script_counts("東京はTokyo")
    assert counts["han"] == 2 and counts["kana"] == 1 and counts["latin"] == 5
    assert langid.stays_in_language("ja", "ja") is True
    assert langid.stays_in_language("latin", "ja") is False
    assert langid.stays_in_language("latin", "en") is None
    assert langid.stays_in_language(None, "ja") is None
    texts = ["今日は晴れです。", "It is sunny today and the sky is blue.", "123", "明日も。"]
    share = langid.output_language_share(texts, "ja")
    assert share["share"] == pytest.approx(2 / 3)
    assert share["n"] == 4 and share["n_decided"] == 3
    assert share["counts"] == {"en": 1, "ja": 2, "none": 1}


# --- the runner on tiny models -------------------------------------------------------------------



LANGS = ["ja", "ko"]
SMALL = dict(n_pairs=16, n_qa=2, qa_shots=1, n_gen=2, n_langid=3, max_new_tokens=5, qa_max_new_tokens=4,
             batch_size=8, knn_k=3, pca_layers=3)


def _neurons():
    from tnedit.formats.neurons import Method, Neuron, NeuronSet

    picks = [(1, 3), (1, 17), (1, 40), (2, 5), (2, 9), (0, 60), (2, 33), (1, 8)]
    return NeuronSet([Neuron(a, b, score=1.0 - i / 10) for i, (a, b) in enumerate(picks)],
                     method=Method(kind="manual", layers=[0, 1, 2]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny import make_tiny

    root = tmp_path_factory.mktemp("evaluate")
    model = make_tiny("llama", root)
    neurons = root / "neurons.json"
    _neurons().save(neurons)
    return root, model, neurons


@pytest.fixture(scope="module")
def baked(tiny):
    from tnedit.edit import apply_to_checkpoint, make_edit_spec
    from tnedit.reporting import NullReporter

    root, model, neurons = tiny
    ns = _neurons()
    out = root / "edited"
    apply_to_checkpoint(str(model), make_edit_spec(ns, "zero"), out, neuron_set=ns, neuron_source=str(neurons),
                        reporter=NullReporter())
    return out


def _settings(model, **kw):
    from tnedit.evaluate import EvaluateSettings

    return EvaluateSettings(original=str(model), **{"languages": list(LANGS), **SMALL, **kw})


@pytest.fixture(scope="module")
def hook_report(tiny):
    from tnedit.evaluate import run_evaluation

    _, model, neurons = tiny
    return run_evaluation(_settings(model, neurons=str(neurons), control="random", kl_top_k=10_000))


def test_factor_one_edit_changes_nothing(tiny):
    from tnedit.evaluate import run_evaluation

    _, model, neurons = tiny
    data = run_evaluation(_settings(model, neurons=str(neurons), op="scale", factor=1.0, n_pairs=12)).data
    orig, edit = data["conditions"]["original"], data["conditions"]["edited"]
    for lang in ["en", *LANGS]:
        assert edit["lm"][lang]["kl"] == 0.0
        assert edit["lm"][lang]["top1"] == 1.0
        assert edit["lm"][lang]["perplexity"] == orig["lm"][lang]["perplexity"]
        assert edit["generations"][lang] == orig["generations"][lang]
    assert edit["representation"] == orig["representation"]
    assert edit["pca"] == orig["pca"] and edit["qa"] == orig["qa"]
    for row in data["headline"]:
        if row["condition"] == "edited":
            assert row["mid_cos_delta"] == 0.0 and row["kl_l2"] == 0.0 and row["kl_en"] == 0.0


def test_hook_report_contents(hook_report):
    data = hook_report.data
    assert list(data["conditions"]) == ["original", "edited", "control"]
    ctl = data["control"]
    edited = {(n.layer, n.index) for n in _neurons().neurons}
    picked = {tuple(x) for x in ctl["neurons"]}
    assert len(picked) == len(edited) and not picked & edited
    assert {a for a, _ in picked} <= {0, 1, 2} and ctl["seed"] == 42
    assert data["edit"]["source"] == "hook" and data["edit"]["n_neurons"] == 8
    assert data["edit"]["neuron_set_sha256"] == _neurons().sha256()
    assert data["data"]["rows"] == [0, 16] and len(data["data"]["sha256"]) == 64
    assert data["mid_layers"] == [1] and data["layers"] == [0, 1, 2, 3]
    for name in ("edited", "control"):
        assert data["conditions"][name]["kl_method"] == "exact"
        assert data["conditions"][name]["lm"]["ja"]["kl"] > 0
    assert len(data["headline"]) == 3 * len(LANGS)
    qa = data["conditions"]["original"]["qa"]["ja"]
    assert qa["n"] == 2 and 0.0 <= qa["f1"] <= 1.0
    from tnedit.formats.report import report_errors

    assert report_errors(data) == []
    assert report_errors(json.loads(hook_report.to_json())) == []


def test_baked_and_hook_agree(tiny, baked, hook_report):
    from tnedit.evaluate import run_evaluation

    _, model, _ = tiny
    data = run_evaluation(_settings(model, edited=str(baked), control="random", kl_top_k=10_000)).data
    hook = hook_report.data
    assert data["edit"]["source"] == "baked"
    assert data["models"]["edited"]["tokenizer_check"].startswith("tokenizer files")
    assert data["control"]["neurons"] == hook["control"]["neurons"]
    for name in ("original", "edited", "control"):
        a, b = data["conditions"][name], hook["conditions"][name]
        for lang in LANGS:
            for key, values in a["representation"][lang].items():
                assert np.allclose(values, b["representation"][lang][key], atol=1e-5), (name, lang, key)
        for lang in ["en", *LANGS]:
            la, lb = a["lm"][lang], b["lm"][lang]
            assert la["perplexity"] == pytest.approx(lb["perplexity"], rel=1e-5)
            if name != "original":
                assert la["kl"] == pytest.approx(lb["kl"], rel=1e-4, abs=1e-9)
                assert la["top1"] == lb["top1"]
        assert a["generations"] == b["generations"]
    assert data["conditions"]["edited"]["kl_method"] == "exact"  # kl_top_k >= vocab


def test_baked_kl_topk_is_a_lower_bound(tiny, baked, hook_report):
    from tnedit.evaluate import run_evaluation

    _, model, _ = tiny
    data = run_evaluation(_settings(model, edited=str(baked), kl_top_k=8, n_qa=0, n_langid=0, n_gen=0)).data
    edit = data["conditions"]["edited"]
    assert edit["kl_method"] == "top-8+rest"
    for lang in ["en", *LANGS]:
        exact = hook_report.data["conditions"]["edited"]["lm"][lang]
        assert 0 <= edit["lm"][lang]["kl"] <= exact["kl"] * (1 + 1e-6)
        assert edit["lm"][lang]["top1"] == exact["top1"]
    assert "qa" in edit and edit["qa"] == {}


def test_last_position_hook_leaves_perplexity(tiny):
    from tnedit.evaluate import run_evaluation

    _, model, neurons = tiny
    data = run_evaluation(_settings(model, neurons=str(neurons), positions="last", n_qa=0, n_gen=0, n_langid=0)).data
    orig, edit = data["conditions"]["original"], data["conditions"]["edited"]
    for lang in ["en", *LANGS]:
        assert edit["lm"][lang]["perplexity"] == pytest.approx(orig["lm"][lang]["perplexity"], rel=1e-6)
    assert edit["representation"]["ja"]["cos_parallel"] != orig["representation"]["ja"]["cos_parallel"]


def test_layers_filter_equals_a_set_of_those_layers(tiny, tmp_path):
    from tnedit.evaluate import run_evaluation
    from tnedit.formats.neurons import NeuronSet

    _, model, neurons = tiny
    only = _neurons()
    only = NeuronSet([n for n in only.neurons if n.layer == 1], method=only.method)
    only.save(tmp_path / "layer1.json")
    quick = dict(n_qa=0, n_gen=0, n_langid=0, control="random")
    filtered = run_evaluation(_settings(model, neurons=str(neurons), layers="1", **quick)).data
    direct = run_evaluation(_settings(model, neurons=str(tmp_path / "layer1.json"), **quick)).data
    assert filtered["edit"]["n_neurons"] == len(only.neurons)
    assert filtered["edit"]["per_layer"] == {1: len(only.neurons)}
    assert {layer for layer, _ in filtered["control"]["neurons"]} == {1}, "the control must come from the kept layers"
    assert filtered["conditions"]["edited"]["representation"] == direct["conditions"]["edited"]["representation"]
    assert filtered["conditions"]["edited"]["lm"] == direct["conditions"]["edited"]["lm"]


# --- reports --------------------------------------------------------------------------------------


def _png(path: Path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 5000, path
    return data


def test_write_report_files(hook_report, tmp_path):
    from tnedit.evaluate import write_report
    from tnedit.evaluate.tables import headline_table, render_console, render_markdown

    out = write_report(hook_report, tmp_path / "report")
    assert not list(tmp_path.glob(".report*"))  # no temporary sibling left
    data = json.loads((out / "report.json").read_text())
    assert data["format"] == "tnedit.report/1"
    for name in ("similarity.png", "mutual_knn.png"):
        _png(out / name)
    for kind in ("pca", "centroids"):
        blobs = [_png(out / f"{kind}_{c}.png") for c in ("original", "edited", "control")]
        assert len(set(blobs)) == 3
    md = (out / "report.md").read_text()
    table = headline_table(data)
    console = render_console([table])
    # one table, two renderers: the same cells in both
    for cells in table.cells():
        for cell in cells:
            assert cell in md and cell in console
    assert render_markdown([table]) in md
    assert "![similarity](similarity.png)" in md
    with pytest.raises(Exception, match="already exists"):
        write_report(hook_report, out)
    write_report(hook_report, out, overwrite=True)


def test_validate_report_catches_errors(hook_report):
    from tnedit.formats.report import report_errors

    data = json.loads(hook_report.to_json())
    broken = json.loads(json.dumps(data))
    del broken["settings"]["languages"]
    assert any("languages" in e for e in report_errors(broken))
    broken = json.loads(json.dumps(data))
    broken["format"] = "tnedit.report/0"
    assert report_errors(broken)
    broken = json.loads(json.dumps(data))
    broken["conditions"]["edited"]["representation"]["ja"]["cos_parallel"] = [0.1]
    assert any("cos_parallel" in e for e in report_errors(broken))
    broken = json.loads(json.dumps(data))
    broken["conditions"]["edited"]["lm"]["en"]["n_tokens"] = "7"
    assert any("n_tokens" in e for e in report_errors(broken))
    broken = json.loads(json.dumps(data))
    del broken["headline"][0]["kl_l2"]
    assert any("headline[0]" in e for e in report_errors(broken))
    assert report_errors([]) == ["report: expected a JSON object"]


def test_update_card_replaces_section(hook_report, baked, tmp_path):
    import shutil

    from tnedit.evaluate import update_card

    card_dir = tmp_path / "ckpt"
    shutil.copytree(baked, card_dir)
    before = (card_dir / "README.md").read_text()
    update_card(hook_report, card_dir, report_dir=card_dir / "evaluation")
    once = (card_dir / "README.md").read_text()
    assert "<!-- tnedit:evaluation:start -->" in once and "| condition |" in once
    assert "](evaluation/similarity.png)" in once
    assert once.startswith(before.split("\n")[0])  # front matter kept
    update_card(hook_report, card_dir)
    twice = (card_dir / "README.md").read_text()
    assert twice.count("<!-- tnedit:evaluation:start -->") == 1


def test_report_format_is_typed_and_round_trips(hook_report, tmp_path):
    """tnedit.report/1 read into dataclasses: the checked keys typed, every other key kept, the same dict back."""
    from tnedit.errors import InputError
    from tnedit.formats.report import Report, ReportError, load_report

    data = json.loads(hook_report.to_json())
    report = Report.from_dict(data)
    assert report.format == "tnedit.report/1" and report.settings.languages == LANGS
    assert report.settings.extra["n_qa"] == SMALL["n_qa"] and report.data.rows == [0, 16]
    edited = report.conditions["edited"]
    assert edited.source == "hook" and edited.extra["kl_method"] == "exact"
    assert edited.lm["en"].n_tokens == data["conditions"]["edited"]["lm"]["en"]["n_tokens"]
    assert edited.lm["ja"].extra["kl"] == data["conditions"]["edited"]["lm"]["ja"]["kl"]
    assert edited.representation["ko"].mutual_knn == data["conditions"]["edited"]["representation"]["ko"]["mutual_knn"]
    assert report.to_dict() == data
    path = tmp_path / "report.json"
    path.write_text(hook_report.to_json(), encoding="utf-8")
    assert load_report(path).to_dict() == data
    broken = json.loads(json.dumps(data))
    del broken["runtime"]["total_s"]
    with pytest.raises(ReportError, match=r"report does not validate: runtime.total_s: expected a number") as exc:
        Report.from_dict(broken)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, InputError)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_report(path)
    with pytest.raises(ReportError, match="report does not validate"):
        from tnedit.evaluate import write_report

        write_report(broken, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_settings_resolve_and_the_generated_options():
    """One declaration per setting: the CLI's options carry each field's flags, default and help."""
    import click

    from tnedit.cli.evaluate import evaluate
    from tnedit.errors import InputError
    from tnedit.evaluate.settings import EvaluateSettings, GenerationSettings
    from tnedit.settings import setting_fields

    s = EvaluateSettings("m", [" ja ", "ja", "ko", ""], neurons="n").resolve()
    assert (s.languages, s.op, s.positions, s.control) == (["ja", "ko"], "zero", "all", None)
    assert EvaluateSettings("m", ["ja"], neurons="n", control="random").resolve().control == "random"
    assert s.generation == GenerationSettings(s.n_gen, s.n_langid, s.max_new_tokens, s.qa_max_new_tokens,
                                              s.gen_batch_size)
    assert list(s.to_dict())[:4] == ["original", "languages", "edited", "neurons"]
    with pytest.raises(InputError, match="apply to --neurons hooks"):
        EvaluateSettings("m", ["ja"], edited="e", top_k=3).check_baked_options()
    EvaluateSettings("m", ["ja"], edited="e", positions="all").check_baked_options()
    with pytest.raises(InputError, match="--positions applies to hook edits"):
        EvaluateSettings("m", ["ja"], edited="e", positions="last").resolve()
    options = {p.name: p for p in evaluate.params if isinstance(p, click.Option)}
    fields = [f for f in setting_fields(EvaluateSettings) if f.info.cli]
    for f in fields:
        option = options[f.name]
        assert option.help == f.info.help and option.opts[-1] == f.flags[-1], f.name
        assert option.multiple if f.info.multiple else option.default == f.default, f.name
    assert set(options) - {f.name for f in fields} == {"out", "overwrite", "card_dir", "quiet", "as_json"}
    assert options["languages"].required and options["out"].required


# --- errors ---------------------------------------------------------------------------------------


def test_error_missing_language(tiny):
    from tnedit.errors import InputError
    from tnedit.evaluate import run_evaluation

    _, model, neurons = tiny
    with pytest.raises(InputError, match="xx"):
        run_evaluation(_settings(model, neurons=str(neurons), languages=["xx"]))
    with pytest.raises(InputError, match="shared language"):
        run_evaluation(_settings(model, neurons=str(neurons), languages=["en"]))
    with pytest.raises(InputError, match="exactly one"):
        run_evaluation(_settings(model))


def test_error_mismatched_tokenizers(tiny, tmp_path):
    from tests.tiny import make_tiny
    from tnedit.errors import InputError
    from tnedit.evaluate import check_tokenizers

    _, model, _ = tiny
    assert check_tokenizers(model, model, ["a b"]).startswith("tokenizer files identical")
    other_vocab = make_tiny("llama", tmp_path, vocab_size=400)
    with pytest.raises(InputError, match="vocab"):
        check_tokenizers(model, other_vocab, ["a"])
    no_bos = make_tiny("llama", tmp_path, add_bos=False, subdir="nobos")
    with pytest.raises(InputError, match="split"):
        check_tokenizers(model, no_bos, ["The cat sits on the mat."])


def test_error_not_derived(tiny, baked, tmp_path):
    import shutil

    from tnedit.errors import InputError
    from tnedit.evaluate import run_evaluation

    _, model, _ = tiny
    bad = tmp_path / "edited-elsewhere"
    shutil.copytree(baked, bad)
    prov = json.loads((bad / "tnedit.json").read_text())
    prov["source"]["fingerprint"] = "sha256:0000"
    prov["source"]["name_or_path"] = "someone/other-model"
    (bad / "tnedit.json").write_text(json.dumps(prov))
    with pytest.raises(InputError, match="not derived from ORIGINAL.*fingerprint.*other-model.*--force"):
        run_evaluation(_settings(model, edited=str(bad)))
    (bad / "tnedit.json").unlink()
    with pytest.raises(InputError, match="no tnedit.json"):
        run_evaluation(_settings(model, edited=str(bad)))


def test_cli_errors_are_one_line(tiny, tmp_path, capsys):
    from tnedit.cli import main

    _, model, neurons = tiny
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(model), "--neurons", str(neurons), "--lang", "xx", "-o", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tnedit: error:") and "xx" in err and len(err.splitlines()) == 1
    for flag in (["--positions", "last"], ["--layers", "0-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", str(model), str(model), *flag, "--lang", "ja", "-o", str(tmp_path / "r")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert flag[0] in err and "baked EDITED_DIR" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(model), "--neurons", str(neurons), "--layers", "9", "--lang", "ja",
              "-o", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--layers" in err and "9" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_cli_forced_run_with_card(tiny, baked, tmp_path, capsys):
    import shutil

    from tnedit.cli import main

    _, model, _ = tiny
    edited = tmp_path / "edited-moved"
    shutil.copytree(baked, edited)
    prov = json.loads((edited / "tnedit.json").read_text())
    prov["source"]["name_or_path"] = "somewhere/else"
    (edited / "tnedit.json").write_text(json.dumps(prov))
    out = tmp_path / "rep"
    main(["evaluate", str(model), str(edited), "--lang", "ja", "-o", str(out), "--n-pairs", "12", "--n-qa", "1",
          "--qa-shots", "1", "--n-gen", "1", "--n-langid", "2", "--max-new-tokens", "3", "--qa-max-new-tokens", "3",
          "--force", "--update-card", str(edited), "--json"])
    captured = capsys.readouterr()
    assert "warning: EDITED_DIR is not derived" in captured.err
    result = json.loads(captured.out)
    assert result["out"] == str(out) and (out / "report.json").is_file()
    assert "tnedit:evaluation:start" in (edited / "README.md").read_text()
    assert json.loads((out / "report.json").read_text())["warnings"]


def test_evaluate_after_apply(tiny, baked, tmp_path):
    import shutil

    from tnedit.cli.evaluate import evaluate_after_apply

    _, model, _ = tiny
    edited = tmp_path / "fresh"
    shutil.copytree(baked, edited)
    result = evaluate_after_apply(str(model), edited, "ja", quiet=True, **SMALL)
    assert Path(result["out"]) == edited / "evaluation"
    assert (edited / "evaluation" / "report.json").is_file()
    card = (edited / "README.md").read_text()
    assert "tnedit:evaluation:start" in card and "](evaluation/similarity.png)" in card
    assert {row["condition"] for row in result["headline"]} == {"original", "edited", "control"}


def test_overlap_with_identify_rows_warns():
    from tnedit.evaluate.passes import Condition
    from tnedit.evaluate.plan import Plan, overlap_warning
    from tnedit.evaluate.settings import EvaluateSettings

    plan = Plan(Condition("edited", "hook"), None, None, {"method": {"data": {"source": "x.tsv", "n_pairs": 800}}})
    info = {"source": "x.tsv", "rows": [0, 200]}
    s = EvaluateSettings("m", ["ja"], neurons="n")

    def rows(total):
        return lambda limit: min(limit, total)

    msg = overlap_warning(plan, info, rows(5000), skip=s.skip, n_pairs=s.n_pairs)
    assert msg and msg.endswith("pass --skip 800 for a held-out evaluation")
    short = overlap_warning(plan, info, rows(900), skip=s.skip, n_pairs=s.n_pairs)
    assert "only 100 rows follow them" in short and "--skip 800 --n-pairs 100" in short
    none = overlap_warning(plan, info, rows(800), skip=s.skip, n_pairs=s.n_pairs)
    assert "--skip" not in none and "none are held out" in none and "--data" in none
    assert overlap_warning(plan, info, rows(5000), skip=800, n_pairs=s.n_pairs) is None
    assert overlap_warning(plan, {**info, "source": "y.tsv"}, rows(5000), skip=s.skip, n_pairs=s.n_pairs) is None


def test_overlap_advice_counts_the_real_data():
    """On the built-in corpus identify may have used every row: then --skip cannot help."""
    from tnedit.corpus import builtin_corpus
    from tnedit.evaluate.passes import Condition
    from tnedit.evaluate.pipeline import count_rows
    from tnedit.evaluate.plan import Plan, overlap_warning
    from tnedit.evaluate.settings import EvaluateSettings

    total = len(builtin_corpus())
    s = EvaluateSettings("m", ["ja"], neurons="n", n_pairs=200)
    info = {"source": "builtin", "rows": [0, 200]}
    assert count_rows(s, total + 50) == total and count_rows(s, 7) == 7

    def plan(n_used):
        return Plan(Condition("edited", "hook"), None, None,
                     {"method": {"data": {"source": "builtin", "n_pairs": n_used}}})

    every = overlap_warning(plan(total), info, lambda limit: count_rows(s, limit), skip=s.skip, n_pairs=s.n_pairs)
    assert f"the data has {total} rows" in every and "--skip" not in every
    some = overlap_warning(plan(total - 250), info, lambda limit: count_rows(s, limit), skip=s.skip,
                           n_pairs=s.n_pairs)
    assert some.endswith(f"pass --skip {total - 250} for a held-out evaluation")

"""tnedit.corpus and tnedit.qa: the built-in data, TSV/JSONL/HF loading, validation errors and QA sets (no network)."""

from __future__ import annotations

import gzip
import json
import re
import sys
import types
from pathlib import Path

import pytest

from tests.support.paths import TATOEBA
from tnedit import corpus as corpus_mod
from tnedit.corpus import (
    BUILTIN_LANGUAGES,
    ParallelCorpus,
    builtin_corpus,
    check_tokenizable,
    load_corpus,
)
from tnedit.errors import CorpusError, InputError
from tnedit.qa import QAItem, load_qa

DATA_DIR = Path(corpus_mod.__file__).resolve().parent / "data"
QUESTION_MARKS = ("?", "？", "؟")
TERMINAL = {"ja": "。？！", "zh": "。？！"}  # every other language: ". ? !"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def tsv(path: Path, header: str, rows: list[str]) -> Path:
    return write(path, "\n".join([header, *rows]) + "\n")


def rows_en_ja(n: int) -> list[tuple[str, str]]:
    return [(f"Sentence number {i}.", f"文番号{i}です。") for i in range(n)]


# --- the built-in corpus --------------------------------------------------------------------------


def test_builtin_header_matches_constant():
    header = (DATA_DIR / "corpus.tsv").read_text(encoding="utf-8").split("\n", 1)[0]
    assert header == "\t".join(BUILTIN_LANGUAGES) == "en\tja\tko\tzh\tfr\tde\tes\tit\tnl\tru"


def test_builtin_corpus_size_and_languages():
    c = builtin_corpus()
    assert c.source == "builtin"
    assert c.languages == BUILTIN_LANGUAGES
    assert len(c) >= 300
    assert {len(c.column(lang)) for lang in c.languages} == {len(c)}
    assert load_corpus(None).sha256 == c.sha256 == builtin_corpus().sha256


def test_builtin_cells_clean_and_unique():
    c = builtin_corpus()
    for lang in c.languages:
        col = c.column(lang)
        assert all(s and s == s.strip() and "\t" not in s and "\n" not in s for s in col), lang
        dups = sorted({s for s in col if col.count(s) > 1})
        assert not dups, f"duplicated {lang} sentences: {dups[:3]}"
        ends = TERMINAL.get(lang, ".?!")
        bad = [s for s in col if s[-1] not in ends]
        assert not bad, f"{lang} sentences without final punctuation: {bad[:3]}"
    for en in c.column("en"):
        assert 5 <= len(en.split()) <= 15, en


def test_builtin_rows_aligned():
    """Cheap alignment checks: digits and questions survive translation in every column."""
    c = builtin_corpus()
    rows = list(zip(*(c.column(lang) for lang in c.languages), strict=True))
    scripts = {
        "ja": r"[\u3040-\u30ff\u4e00-\u9fff]",
        "ko": r"[\uac00-\ud7af]",
        "zh": r"[\u4e00-\u9fff]",
        "ru": r"[\u0400-\u04ff]",
    }
    for row in rows:
        cells = dict(zip(c.languages, row, strict=True))
        en = cells["en"]
        for digits in re.findall(r"\d+", en):
            for lang, text in cells.items():
                assert digits in text, f"{digits!r} of {en!r} missing from {lang}: {text!r}"
        is_q = en.endswith("?")
        for lang, text in cells.items():
            assert text.endswith(QUESTION_MARKS) == is_q, f"question mismatch {en!r} / {lang}: {text!r}"
        for lang, pattern in scripts.items():
            assert re.search(pattern, cells[lang]), f"{lang} cell is not in its script: {cells[lang]!r}"
        assert not re.search(r"[\u3040-\u30ff]", cells["zh"]), f"kana in zh: {cells['zh']!r}"


def test_builtin_select_limit_and_missing_language():
    c = load_corpus(None, ["ja", "en"], limit=20)
    assert c.languages == ("ja", "en") and len(c) == 20
    assert c.column("en") == builtin_corpus().column("en")[:20]
    with pytest.raises(CorpusError, match=r"builtin: no 'xx' column \(available: en, ja, ko"):
        load_corpus(None, ["en", "xx"])


# --- the built-in QA set --------------------------------------------------------------------------


def test_builtin_qa_file():
    lines = (DATA_DIR / "qa.jsonl").read_text(encoding="utf-8").strip().split("\n")
    assert len(lines) >= 100
    ids = set()
    for line in lines:
        obj = json.loads(line)
        assert obj["id"] not in ids
        ids.add(obj["id"])
        for lang in BUILTIN_LANGUAGES:
            entry = obj[lang]
            assert entry["question"].strip() and entry["question"].endswith(QUESTION_MARKS), (obj["id"], lang)
            assert entry["answers"] and all(isinstance(a, str) and a.strip() for a in entry["answers"])
        # a number answer comes with its digits in every language
        if obj["en"]["answers"][0].isdigit():
            for lang in BUILTIN_LANGUAGES:
                assert obj["en"]["answers"][0] in obj[lang]["answers"], (obj["id"], lang)


@pytest.mark.parametrize("lang", BUILTIN_LANGUAGES)
def test_load_builtin_qa(lang):
    items = load_qa(None, lang)
    assert len(items) >= 100
    assert all(isinstance(it, QAItem) and it.question and it.answers for it in items)
    assert [it.id for it in items] == [it.id for it in load_qa(None, "en")]


def test_builtin_qa_examples():
    by_id = {it.id: it for it in load_qa(None, "en")}
    france = next(it for it in by_id.values() if it.question == "What is the capital of France?")
    assert france.answers == ("Paris",)
    spider = next(it for it in by_id.values() if it.question == "How many legs does a spider have?")
    assert spider.answers == ("8", "eight")
    ja = {it.id: it for it in load_qa(None, "ja")}
    assert ja[france.id].answers == ("パリ",)
    assert "8" in ja[spider.id].answers and "八" in ja[spider.id].answers


# --- file formats ---------------------------------------------------------------------------------


def test_tsv_and_jsonl_same_sha(tmp_path):
    rows = rows_en_ja(12)
    t = tsv(tmp_path / "d.tsv", "en\tja", [f"  {a}\t{b} " for a, b in rows])  # cells are stripped
    j = write(tmp_path / "d.jsonl", "".join(json.dumps({"en": a, "ja": b}, ensure_ascii=False) + "\n" for a, b in rows))
    ct, cj = load_corpus(t), load_corpus(j)
    assert ct.source == str(t) and cj.source == str(j)
    assert ct.languages == cj.languages == ("en", "ja")
    assert ct.pairs("en", "ja") == cj.pairs("en", "ja") == rows
    assert ct.sha256 == cj.sha256
    assert re.fullmatch(r"[0-9a-f]{64}", ct.sha256)
    # stable: the same content built directly hashes the same
    direct = ParallelCorpus("x", ("en", "ja"), {"en": [a for a, _ in rows], "ja": [b for _, b in rows]})
    assert direct.sha256 == ct.sha256
    # a different order of languages is different content
    assert load_corpus(t, ["ja", "en"]).sha256 != ct.sha256


def test_sha256_encoding_is_pinned():
    """The recorded digest's bytes, written out by hand: a header line, the languages, one JSON row per line."""
    import hashlib

    rows = rows_en_ja(3)
    corpus = ParallelCorpus("x", ("en", "ja"), {"en": [a for a, _ in rows], "ja": [b for _, b in rows]})
    lines = [json.dumps(["en", "ja"])] + [json.dumps([a, b], ensure_ascii=False) for a, b in rows]
    expected = hashlib.sha256(("tnedit.corpus/1\n" + "".join(line + "\n" for line in lines)).encode()).hexdigest()
    assert corpus.sha256 == expected


def test_txt_gz_crlf_bom_and_blank_lines(tmp_path):
    rows = rows_en_ja(10)
    body = "\ufeffen\tja\r\n" + "".join(f"{a}\t{b}\r\n\r\n" for a, b in rows)
    txt = write(tmp_path / "d.txt", body)
    gz = tmp_path / "d.tsv.gz"
    gz.write_bytes(gzip.compress(body.encode("utf-8")))
    assert load_corpus(txt).pairs("en", "ja") == rows
    assert load_corpus(gz).sha256 == load_corpus(txt).sha256


def test_required_languages_order_and_limit(tmp_path):
    path = tsv(tmp_path / "d.tsv", "en\tfr\tja", [f"e{i}.\tf{i}.\tj{i}。" for i in range(30)])
    c = load_corpus(path, ["ja", "en"], limit=12)
    assert c.languages == ("ja", "en") and len(c) == 12
    assert c.column("ja")[-1] == "j11。"
    assert load_corpus(path, (), limit=3).languages == ("en", "fr", "ja")  # limit below min_rows is allowed
    assert len(load_corpus(path, None)) == 30


def test_jsonl_languages_inferred_from_first_line(tmp_path):
    lines = [json.dumps({"id": i, "en": f"e{i}.", "de": f"d{i}."}) for i in range(10)]
    c = load_corpus(write(tmp_path / "d.jsonl", "\n".join(lines)))
    assert c.languages == ("en", "de")


# --- errors ---------------------------------------------------------------------------------------


def test_corpus_error_is_input_error():
    assert issubclass(CorpusError, InputError)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.tsv"
    with pytest.raises(CorpusError, match=re.escape(f"{missing}: no such file")):
        load_corpus(missing)
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(str(tmp_path / "nope.csv"))


def test_unknown_extension(tmp_path):
    path = write(tmp_path / "d.csv", "en,ja\na,b\n")
    with pytest.raises(CorpusError, match=r"d\.csv: unknown file type '\.csv'.*\.tsv.*\.jsonl.*hf:"):
        load_corpus(path)


def test_missing_language_column(tmp_path):
    path = tsv(tmp_path / "d.tsv", "en\tja", [f"{a}\t{b}" for a, b in rows_en_ja(10)])
    with pytest.raises(CorpusError, match=r"d\.tsv: no 'ko' column \(available: en, ja\)"):
        load_corpus(path, ["en", "ko"])


def test_empty_data(tmp_path):
    with pytest.raises(CorpusError, match=r"empty\.tsv: empty file"):
        load_corpus(write(tmp_path / "empty.tsv", "\n\n"))
    with pytest.raises(CorpusError, match=r"header\.tsv: no data rows"):
        load_corpus(write(tmp_path / "header.tsv", "en\tja\n"))
    with pytest.raises(CorpusError, match=r"empty\.jsonl: no data"):
        load_corpus(write(tmp_path / "empty.jsonl", ""))


def test_header_required(tmp_path):
    path = write(tmp_path / "noheader.tsv", "Hello there.\tこんにちは。\n" * 12)
    with pytest.raises(CorpusError, match=r"noheader\.tsv, line 1: the first line must be a header"):
        load_corpus(path)


def test_wrong_cell_count_names_line(tmp_path):
    rows = [f"{a}\t{b}" for a, b in rows_en_ja(12)]
    rows[2] = "only one cell"
    path = tsv(tmp_path / "bad.tsv", "en\tja", rows)
    with pytest.raises(CorpusError, match=r"bad\.tsv, line 4: expected 2 tab-separated cells \(en, ja\), found 1"):
        load_corpus(path)


def test_empty_cell_names_line_and_language(tmp_path):
    rows = [f"{a}\t{b}" for a, b in rows_en_ja(12)]
    rows[4] = "Hello.\t   "
    path = tsv(tmp_path / "bad.tsv", "en\tja", rows)
    with pytest.raises(CorpusError, match=r"bad\.tsv, line 6: empty 'ja' cell"):
        load_corpus(path)


def test_jsonl_bad_json_names_line(tmp_path):
    lines = [json.dumps({"en": a, "ja": b}) for a, b in rows_en_ja(12)]
    lines[6] = '{"en": "broken", "ja": '
    path = write(tmp_path / "bad.jsonl", "\n".join(lines))
    with pytest.raises(CorpusError, match=r"bad\.jsonl, line 7: not valid JSON"):
        load_corpus(path)


def test_jsonl_missing_key_names_line(tmp_path):
    lines = [json.dumps({"en": a, "ja": b}) for a, b in rows_en_ja(12)]
    lines[3] = json.dumps({"en": "Only English."})
    path = write(tmp_path / "bad.jsonl", "\n".join(lines))
    with pytest.raises(CorpusError, match=r"bad\.jsonl, line 4: missing key 'ja'"):
        load_corpus(path, ["en", "ja"])


def test_jsonl_not_object_and_empty_value(tmp_path):
    path = write(tmp_path / "list.jsonl", '["en", "ja"]\n')
    with pytest.raises(CorpusError, match=r"list\.jsonl, line 1: expected a JSON object"):
        load_corpus(path)
    lines = [json.dumps({"en": a, "ja": b}) for a, b in rows_en_ja(12)]
    lines[1] = json.dumps({"en": "Hi.", "ja": " "})
    with pytest.raises(CorpusError, match=r"e\.jsonl, line 2: empty 'ja' sentence"):
        load_corpus(write(tmp_path / "e.jsonl", "\n".join(lines)))


def test_too_few_rows(tmp_path):
    path = tsv(tmp_path / "small.tsv", "en\tja", [f"{a}\t{b}" for a, b in rows_en_ja(4)])
    with pytest.raises(CorpusError, match=r"small\.tsv: only 4 usable row\(s\) of en, ja; need at least 10"):
        load_corpus(path)
    assert len(load_corpus(path, min_rows=4)) == 4
    with pytest.raises(CorpusError, match="limit must be a positive integer"):
        load_corpus(path, limit=0)


# --- ParallelCorpus operations --------------------------------------------------------------------


def test_select_slice_split():
    c = builtin_corpus()
    sub = c.select(["ja", "en"])
    assert sub.languages == ("ja", "en") and len(sub) == len(c)
    assert sub.sha256 != c.sha256
    assert sub.column("ja") == c.column("ja")
    with pytest.raises(CorpusError, match=r"builtin: no 'xx' column \(available: en, ja"):
        c.select(["en", "xx"])
    with pytest.raises(CorpusError, match=r"no 'fr' column \(available: ja, en\)"):
        sub.column("fr")

    part = c.slice(10, 20)
    assert len(part) == 10 and part.languages == c.languages
    assert part.column("en") == c.column("en")[10:20]
    assert part.sha256 != c.sha256
    assert c.slice(0, None).sha256 == c.sha256

    first, rest = c.split(100)
    assert len(first) == 100 and len(rest) == len(c) - 100
    assert first.column("ko") + rest.column("ko") == c.column("ko")
    assert first.pairs("en", "ru") == c.pairs("en", "ru")[:100]
    with pytest.raises(CorpusError, match="cannot split off"):
        c.split(len(c) + 1)
    empty, whole = c.split(0)
    assert len(empty) == 0 and whole.sha256 == c.sha256


def test_parallel_corpus_validates_alignment():
    with pytest.raises(CorpusError, match="not aligned"):
        ParallelCorpus("x", ("en", "ja"), {"en": ["a", "b"], "ja": ["c"]})
    c = ParallelCorpus("x", ("en",), {"en": ["Hello there.", "Bye now."]})
    assert isinstance(c.columns["en"], tuple) and len(c) == 2
    assert "Hello" not in repr(c)  # sentences stay out of the repr


# --- check_tokenizable ----------------------------------------------------------------------------


class FakeTokenizer:
    """Tokenizes on whitespace, but knows no token made only of '~'."""

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [hash(w) % 1000 for w in text.split() if set(w) != {"~"}]}


def test_check_tokenizable():
    good = ParallelCorpus("mem", ("en", "ja"), {"en": ["a b", "c", "d", "e"], "ja": ["x", "y", "z", "w"]})
    check_tokenizable(good, FakeTokenizer(), ["en", "ja"])
    bad = ParallelCorpus("mem", ("en", "ja"), {"en": ["a b", "~", "d", "~~ ~"], "ja": ["x", "y", "z", "w"]})
    with pytest.raises(CorpusError, match=r"mem: .*2 'en' sentence\(s\) at row\(s\) 2, 4"):
        check_tokenizable(bad, FakeTokenizer(), ["en", "ja"])
    check_tokenizable(bad, FakeTokenizer(), ["ja"])


# --- the real Tatoeba data ------------------------------------------------------------------------


@pytest.mark.skipif(not TATOEBA.is_dir(), reason=f"shared Tatoeba data not found at {TATOEBA}")
def test_real_tatoeba_en_ja():
    path = TATOEBA / "en-ja.train.tsv"
    c = load_corpus(path, ["en", "ja"])
    assert len(c) == 1000
    assert c.languages == ("en", "ja")
    assert all(c.column("en")) and all(c.column("ja"))
    assert load_corpus(path, ["en", "ja"]).sha256 == c.sha256
    with pytest.raises(CorpusError, match=r"en-ja\.train\.tsv: no 'ko' column \(available: en, ja\)"):
        load_corpus(path, ["en", "ko"])


@pytest.mark.skipif(not TATOEBA.is_dir(), reason=f"shared Tatoeba data not found at {TATOEBA}")
@pytest.mark.parametrize("lang", ["it", "ko", "nl"])
def test_real_tatoeba_other_languages(lang):
    path = TATOEBA / f"en-{lang}.train.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert len(load_corpus(path, ["en", lang])) == 1000


# --- Hugging Face datasets (faked, no network) ----------------------------------------------------


class FakeDataset(list):
    def __init__(self, rows):
        super().__init__(rows)
        self.column_names = list(rows[0]) if rows else []


def fake_datasets(monkeypatch, result):
    mod = types.ModuleType("datasets")
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        if isinstance(result, Exception):
            raise result
        return result

    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", mod)
    return calls


def test_hf_flat_columns(monkeypatch):
    rows = [{"id": str(i), "en": f"e{i}.", "ja": f"j{i}。", "fr": f"f{i}.", "n": i} for i in range(15)]
    calls = fake_datasets(monkeypatch, {"train": FakeDataset(rows), "test": FakeDataset(rows[:1])})
    c = load_corpus("hf:someone/parallel:en-ja", ["en", "ja"], limit=12)
    assert calls == [("someone/parallel", "en-ja")]
    assert c.source == "hf:someone/parallel:en-ja" and c.languages == ("en", "ja") and len(c) == 12
    with pytest.raises(CorpusError, match=r"hf:someone/parallel: no 'ko' column \(available: en, ja, fr\)"):
        load_corpus("hf:someone/parallel", ["en", "ko"])
    assert load_corpus("hf:someone/parallel").languages == ("en", "ja", "fr")  # not the 'id' column


def test_hf_translation_column(monkeypatch):
    rows = [{"translation": {"en": f" e{i}. ", "ja": f"j{i}。"}} for i in range(10)]
    calls = fake_datasets(monkeypatch, FakeDataset(rows))
    c = load_corpus("hf:opus_books")
    assert calls == [("opus_books", None)]
    assert c.languages == ("en", "ja") and c.column("en")[0] == "e0."
    # same content as a TSV gives the same hash
    assert c.sha256 == ParallelCorpus("t", ("en", "ja"), {"en": c.column("en"), "ja": c.column("ja")}).sha256


def test_hf_load_failure(monkeypatch):
    fake_datasets(monkeypatch, FileNotFoundError("Dataset 'nope' doesn't exist on the Hub"))
    with pytest.raises(CorpusError, match=r"hf:nope: cannot load the dataset \(Dataset 'nope' doesn't exist"):
        load_corpus("hf:nope")


def test_hf_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(CorpusError, match=re.escape("pip install 'tnedit[hf]'")):
        load_corpus("hf:opus_books:en-ja")


# --- QA files -------------------------------------------------------------------------------------


def test_load_qa_our_format(tmp_path):
    lines = [
        {"id": "a1", "en": {"question": "Capital of France?", "answers": ["Paris"]},
         "ja": {"question": "フランスの首都は？", "answers": ["パリ", " "]}},
        {"id": "a2", "en": {"question": "Legs of a spider?", "answers": ["8", "eight"]},
         "ja": {"question": "クモの脚は？", "answers": ["8", "八"]}},
    ]
    path = write(tmp_path / "qa.jsonl", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines))
    ja = load_qa(path, "ja")
    assert ja == [QAItem("a1", "フランスの首都は？", ("パリ",)), QAItem("a2", "クモの脚は？", ("8", "八"))]
    with pytest.raises(CorpusError, match=r"qa\.jsonl, line 1: no 'ko' entry \(available: en, ja\)"):
        load_qa(path, "ko")


def test_load_qa_mkqa_format(tmp_path):
    lines = [
        {"example_id": 563260143484355911, "query": "who sings the song it's my party",
         "queries": {"en": "who sings the song it's my party", "ja": "「イッツ・マイ・パーティー」を歌っているのは誰？",
                     "zh_cn": "谁唱的《这是我的派对》"},
         "answers": {"en": [{"type": "entity", "entity": "Q1", "text": "Lesley Gore", "aliases": ["Gore"]}],
                     "ja": [{"type": "entity", "text": "レスリー・ゴーア", "aliases": []}],
                     "zh_cn": [{"type": "entity", "text": "莱斯莉·戈尔"}]}},
        {"example_id": 2, "query": "how many legs does a spider have",
         "queries": {"en": "how many legs does a spider have", "ja": "クモの脚は何本？", "zh_cn": "蜘蛛有几条腿"},
         "answers": {"en": [{"type": "number", "text": "8.0", "aliases": ["8", "eight"]}],
                     "ja": [{"type": "number", "text": "8.0", "aliases": ["8"]}],
                     "zh_cn": [{"type": "number", "text": "8.0"}]}},
        {"example_id": 3, "query": "unanswerable question",
         "queries": {"en": "why?", "ja": "なぜ？", "zh_cn": "为什么"},
         "answers": {"en": [{"type": "unanswerable", "text": None}], "ja": [{"type": "unanswerable", "text": None}],
                     "zh_cn": [{"type": "unanswerable", "text": None}]}},
    ]
    path = tmp_path / "mkqa.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode()))
    en = load_qa(path, "en")
    assert [it.id for it in en] == ["563260143484355911", "2"]  # the unanswerable item is skipped
    assert en[0].answers == ("Lesley Gore", "Gore") and en[1].answers == ("8.0", "8", "eight")
    ja = load_qa(path, "ja")
    assert ja[0].question.startswith("「イッツ") and ja[0].answers == ("レスリー・ゴーア",)
    zh = load_qa(path, "zh")  # MKQA spells it zh_cn
    assert zh[1].question == "蜘蛛有几条腿" and zh[1].answers == ("8.0",)
    with pytest.raises(CorpusError, match=r"mkqa\.jsonl\.gz, line 1: no 'ko' query"):
        load_qa(path, "ko")


def test_load_qa_errors(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.jsonl: no such file"):
        load_qa(tmp_path / "nope.jsonl", "en")
    bad = write(tmp_path / "bad.jsonl", '{"id": "x", "en": {"question": "Q?", "answers": ["A"]}}\n{oops\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_qa(bad, "en")
    odd = write(tmp_path / "odd.jsonl", '{"foo": 1}\n')
    with pytest.raises(CorpusError, match=r"odd\.jsonl, line 1: expected .*MKQA"):
        load_qa(odd, "en")
    none = write(tmp_path / "none.jsonl", '{"id": "x", "en": {"question": "Q?", "answers": []}}\n')
    with pytest.raises(CorpusError, match=r"none\.jsonl: no QA items with answers for 'en'"):
        load_qa(none, "en")

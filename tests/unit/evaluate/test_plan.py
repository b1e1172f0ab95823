"""evaluate.plan: the warning when evaluate would reuse the rows identify ranked neurons on."""

from __future__ import annotations


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

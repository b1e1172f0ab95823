"""evaluate.metrics against hand computations: cosines, the derangement floor, kNN, PCA, NLL, KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tnedit.evaluate import metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")



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

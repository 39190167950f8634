"""Multi-tag selection metrics: hand-computed cases, scikit-learn parity, distributed reduction."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import accuracy_score, average_precision_score, precision_recall_fscore_support

from ttd.metrics import TagMetrics, average_precision

T = torch.tensor


def _hand_metrics() -> TagMetrics:
    m = TagMetrics()
    # caption 1: tp, fp, fn, tn; ranking T F T F → AP = (1/1 + 2/3) / 2
    m.update(T([0.9, 0.8, 0.3, 0.1]), T([1, 1, 0, 0]).bool(), T([1, 0, 1, 0]).bool())
    # caption 2: tn, tp, fp; the positive ranks first → AP = 1
    m.update(T([0.2, 0.7, 0.6]), T([0, 1, 1]).bool(), T([0, 1, 0]).bool())
    return m


def test_hand_computed_case():
    out = _hand_metrics().compute()
    # tp = 2, fp = 2, fn = 1, tn = 2
    assert out["precision"] == pytest.approx(2 / 4)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(4 / 7)
    assert out["accuracy"] == pytest.approx(4 / 7)
    assert out["map"] == pytest.approx((5 / 6 + 1) / 2)
    assert (out["captions"], out["decisions"], out["map_captions"]) == (2, 7, 2)


def test_caption_without_positive_is_left_out_of_map_but_counts_in_decisions():
    m = _hand_metrics()
    m.update(T([0.5, 0.4]), T([1, 0]).bool(), T([0, 0]).bool())  # one fp, one tn
    out = m.compute()
    assert out["map"] == pytest.approx((5 / 6 + 1) / 2)
    assert (out["captions"], out["decisions"], out["map_captions"]) == (3, 9, 2)
    assert out["precision"] == pytest.approx(2 / 5)
    assert out["accuracy"] == pytest.approx(5 / 9)
    assert average_precision(T([0.5, 0.4]), T([0, 0]).bool()) is None


def test_taggers_without_scores_have_no_map():
    m = TagMetrics()
    m.update(None, T([1, 0]).bool(), T([1, 1]).bool())
    out = m.compute()
    assert out["map"] is None and out["recall"] == 0.5 and out["precision"] == 1.0


def test_empty_state_and_zero_denominators():
    out = TagMetrics().compute()
    assert out == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, "map": None,
                   "captions": 0, "decisions": 0, "map_captions": 0}


def test_reset():
    m = _hand_metrics()
    m.reset()
    assert m.compute()["decisions"] == 0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match=r"one entry per candidate, got 3, 2 and 2"):
        TagMetrics().update(T([0.1, 0.2, 0.3]), T([1, 0]).bool(), T([1, 0]).bool())


def _random_captions(seed: int, count: int = 40, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    captions = []
    for _ in range(count):
        n = int(torch.randint(1, 10, (1,), generator=g))
        scores = torch.randint(0, 3, (n,), generator=g).float() / 3 if ties else torch.rand(n, generator=g)
        truth = torch.rand(n, generator=g) < 0.4
        selected = scores >= 0.5
        captions.append((scores, selected, truth))
    return captions


@pytest.mark.parametrize("ties", [False, True])
def test_matches_scikit_learn(ties):
    captions = _random_captions(1 + ties, ties=ties)
    m = TagMetrics()
    for scores, selected, truth in captions:
        m.update(scores, selected, truth)
    out = m.compute()
    y_true = torch.cat([c[2] for c in captions]).numpy()
    y_pred = torch.cat([c[1] for c in captions]).numpy()
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    aps = [average_precision_score(t.numpy(), s.numpy()) for s, _, t in captions if t.any()]
    assert out["precision"] == pytest.approx(p)
    assert out["recall"] == pytest.approx(r)
    assert out["f1"] == pytest.approx(f)
    assert out["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert out["map"] == pytest.approx(np.mean(aps))
    assert out["map_captions"] == len(aps)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = TagMetrics()
        for scores, selected, truth in _random_captions(7)[rank::world]:
            m.update(scores, selected, truth)
        results[rank] = m.compute()
    finally:
        dist.destroy_process_group()


def test_reduces_across_ranks():
    """Two gloo ranks, each with half the captions, report the single-process figures."""
    results = mp.Manager().dict()
    mp.spawn(_rank_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    single = TagMetrics()
    for scores, selected, truth in _random_captions(7):
        single.update(scores, selected, truth)
    expected = single.compute()
    for rank in range(2):
        assert results[rank] == pytest.approx(expected)

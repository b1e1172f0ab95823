"""The data-parallel pieces that need no second process: shards, the launcher's environment, GPU shares.

The ranks themselves (gloo processes, a killed rank, resume) are in ``tests/integration/test_distributed.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

from tnedit.errors import InputError
from tnedit.model.distributed import (
    LAUNCHER_VARIABLES,
    SINGLE,
    World,
    current_world,
    join_world,
    launched_world,
    local_gpus,
    rank_reporter,
    release_launcher,
)
from tnedit.reporting import NullReporter, SilentReporter

LAUNCHER = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500"}


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("total", [0, 1, 2, 7, 12])
def test_ranks_share_every_batch_exactly_once(size, total):
    worlds = [World(rank, size) for rank in range(size)]
    taken = [b for w in worlds for step in range(w.steps(total)) if (b := w.batch_at(step, total)) is not None]
    assert sorted(taken) == list(range(total))
    assert all(w.owns(b) == (b in {w.batch_at(s, total) for s in range(w.steps(total))})
               for w in worlds for b in range(total))
    steps = worlds[0].steps(total)
    assert all(w.steps(total) == steps for w in worlds)  # every rank takes part in every step
    assert sum(worlds[0].step_batches(step, total) for step in range(steps)) == total
    assert worlds[0].batches_done(steps, total) == total


def test_the_launchers_environment_names_the_world(monkeypatch):
    for name, value in LAUNCHER.items():
        monkeypatch.setenv(name, value)
    world = launched_world()
    assert (world.rank, world.size, world.local_rank, world.local_size) == (1, 4, 1, 2)
    assert world.is_distributed and not world.is_main


def test_without_a_launcher_the_world_is_one_rank(monkeypatch):
    for name in LAUNCHER:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "3")  # a lone variable is not a launcher
    assert launched_world() == SINGLE
    assert join_world("cpu") == SINGLE and current_world() == SINGLE


@pytest.mark.parametrize(("name", "value"), [("RANK", "one"), ("RANK", "4"), ("WORLD_SIZE", "0")])
def test_a_broken_launcher_environment_is_one_line(monkeypatch, name, value):
    for key, good in LAUNCHER.items():
        monkeypatch.setenv(key, good)
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError) as caught:
        launched_world()
    assert "\n" not in str(caught.value) and ("RANK" in str(caught.value) or name in str(caught.value))


def test_releasing_the_launcher_makes_one_process(monkeypatch):
    for name, value in LAUNCHER.items():
        monkeypatch.setenv(name, value)
    release_launcher()
    assert launched_world() == SINGLE
    assert not any(name in os.environ for name in LAUNCHER_VARIABLES)


def test_one_rank_helpers_are_the_identity():
    tensors = {"a": torch.arange(3.0, dtype=torch.float64), "n": torch.tensor([4])}
    reduced = SINGLE.all_reduce(tensors)
    assert reduced.keys() == tensors.keys() and all(reduced[k] is tensors[k] for k in tensors)
    assert SINGLE.all_gather({"x": 1}) == [{"x": 1}]
    assert SINGLE.gather_to_main("v") == ["v"]
    assert SINGLE.broadcast(7) == 7
    SINGLE.step_done()  # no process group: nothing to confirm
    assert [index for _, index in SINGLE.shared_steps(3)] == [0, 1, 2]


@pytest.mark.parametrize(("rank", "local_size", "visible", "expected"),
                         [(0, 2, 8, [0, 1, 2, 3]), (1, 2, 8, [4, 5, 6, 7]), (2, 4, 4, [2]), (0, 1, 3, [0, 1, 2])])
def test_each_rank_spreads_its_model_over_its_share_of_the_gpus(rank, local_size, visible, expected):
    world = World(rank, local_size * 2, rank, local_size)
    assert local_gpus(world, visible) == expected


def test_more_ranks_than_gpus_on_a_node_is_refused():
    with pytest.raises(InputError, match="ranks on this node share 2 GPU"):
        local_gpus(World(0, 4, 0, 4), 2)


def test_only_rank_zero_reports():
    reporter = NullReporter()
    assert rank_reporter(World(0, 2), reporter) is reporter
    assert isinstance(rank_reporter(World(1, 2), reporter), SilentReporter)

"""Data-parallel runs of the real CLI in tests: each rank a ``python -m tnedit`` process on CPU (gloo).

:func:`start_ranks` starts them the way a launcher does, by environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``, …), so a test can kill one of them; :func:`torchrun` runs the real
launcher (``python -m torch.distributed.run --standalone``) and :func:`accelerate_launch` Accelerate's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.paths import REPO

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _environment() -> dict[str, str]:
    """The test's environment for a child: one torch thread per rank (2 cores), the repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ranks(args: Sequence[str], ranks: int, cwd: Path) -> list[subprocess.Popen[str]]:
    """``tnedit ARGS`` as ``ranks`` processes of one gloo world, started by environment as a launcher would."""
    port = free_port()
    procs = []
    for rank in range(ranks):
        env = _environment()
        env.update(RANK=str(rank), WORLD_SIZE=str(ranks), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(ranks),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "tnedit", *args], cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def single(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``tnedit ARGS`` as one process without a launcher."""
    return subprocess.run([sys.executable, "-m", "tnedit", *args], cwd=cwd, env=_environment(), text=True,
                          capture_output=True, timeout=600)


def accelerate_launch(args: Sequence[str], ranks: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``accelerate launch --multi_gpu --num_processes RANKS -m tnedit ARGS`` (gloo ranks where there is no GPU)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(ranks),
               "--num_machines", "1", "--main_process_port", str(free_port()), "-m", "tnedit", *args]
    return subprocess.run(command, cwd=cwd, env=_environment(), text=True, capture_output=True, timeout=600)


def torchrun(args: Sequence[str], ranks: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node RANKS -m tnedit ARGS``."""
    return subprocess.run([*TORCHRUN, "--nproc-per-node", str(ranks), "-m", "tnedit", *args], cwd=cwd,
                          env=_environment(), text=True, capture_output=True, timeout=600)

"""Multi-node training on one CPU machine: train.py --num_nodes 2, one process per "node", over gloo.

Each node is started the way a cluster launcher would start it (MASTER_ADDR, MASTER_PORT, NODE_RANK,
WORLD_SIZE; Lightning's LightningEnvironment reads them). --train_batch_size is global, so with 2 nodes ×
1 device a batch of 4 is 2 images per process: 8 images (4 per process with the DistributedSampler)
make 2 optimizer steps per epoch, where an undivided batch would make 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
import torch
from helpers import TINY_SWINIR, write_arch_json, write_images

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 420  # seconds for both nodes together; the test kills them both after that
CLUSTER_VARIABLES = ("LOCAL_RANK", "GLOBAL_RANK", "RANK", "GROUP_RANK", "NODE_RANK", "WORLD_SIZE",
                     "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED")


def node_environment(node_rank: int, port: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in CLUSTER_VARIABLES and not k.startswith(("SLURM_", "OMPI_", "PMI_", "LSB_"))}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node_rank), WORLD_SIZE="2",
               GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def run_nodes(argv: list[str], port: int, log_dir: Path, timeout: float = TIMEOUT) -> list[int]:
    """Start both nodes, wait for both; if one fails or time runs out, kill every process of both."""
    nodes = []
    with ExitStack() as logs:
        try:
            for rank in range(2):
                log = logs.enter_context(open(log_dir / f"node{rank}.log", "w"))
                nodes.append(subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, stdout=log,
                                              stderr=subprocess.STDOUT, env=node_environment(rank, port),
                                              start_new_session=True))
            deadline = time.monotonic() + timeout
            while any(node.poll() is None for node in nodes):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the two nodes did not finish within {timeout} s\n{tail(log_dir)}")
                if any(node.poll() not in (None, 0) for node in nodes):  # one failed: the other would wait forever
                    time.sleep(5)
                    break
                time.sleep(0.5)
            return [node.poll() for node in nodes]
        finally:
            for node in nodes:
                if node.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(node.pid, signal.SIGKILL)
                    node.wait()


def tail(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("node*.log")))


@pytest.mark.slow
def test_two_nodes_split_the_global_batch(tmp_path, free_port):
    write_images(tmp_path / "train", 8, (16, 16))
    arch = write_arch_json(tmp_path / "swinir.json", TINY_SWINIR)
    out = tmp_path / "out"
    argv = ["--stage", "mmse", "--arch", str(arch), "--degradation", "gaussian_noise_035",
            "--train_data_root", str(tmp_path / "train"), "--img_size", "16", "--train_batch_size", "4",
            "--num_workers", "0", "--precision", "32", "--accelerator", "cpu", "--devices", "1",
            "--num_nodes", "2", "--max_epochs", "1", "--log_every_n_steps", "1", "--logger", "csv",
            "--output_dir", str(out), "--seed", "0"]
    codes = run_nodes(argv, free_port, tmp_path)
    assert codes == [0, 0], f"exit codes {codes}\n{tail(tmp_path)}"
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    # 8 images over 2 processes, 2 per process per step: 2 steps (an undivided batch of 4 would give 1)
    assert checkpoint["global_step"] == 2, tail(tmp_path)
    assert checkpoint["epoch"] == 0
    log = (tmp_path / "node0.log").read_text()
    assert "GLOBAL_RANK: 0" in log or "MEMBER: 1/2" in log, log[-3000:]
    assert "MEMBER: 2/2" in (tmp_path / "node1.log").read_text()

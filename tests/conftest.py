import json
import os
from pathlib import Path

import pytest
import torch

# Manifests of the official checkpoints' state-dict keys and shapes (copied from the project spec).
_HERE = Path(__file__).resolve().parent
MANIFEST_DIRS = [_HERE / "data" / "checkpoint_keys"]


def load_manifest(name: str) -> dict:
    for folder in MANIFEST_DIRS:
        path = folder / name
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"{name} not found in {[str(p) for p in MANIFEST_DIRS]}")


@pytest.fixture(scope="session")
def arch_manifest() -> dict:
    return load_manifest("architectures.json")


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    yield


TINY_HDIT = {
    "type": "hdit",
    "patch_size": [2, 2],
    "widths": [16, 32],
    "depths": [1, 1],
    "self_attns": [
        {"type": "neighborhood", "d_head": 8, "kernel_size": 3},
        {"type": "global", "d_head": 8},
    ],
    "mapping_width": 16,
    "mapping_depth": 1,
}

TINY_SWINIR = {
    "type": "swinir",
    "embed_dim": 12,
    "depths": [2],
    "num_heads": [2],
    "window_size": 4,
    "sf": 2,
    "img_size": 8,
}


# --- pytest-xdist: `make test` runs `pytest -n auto --dist loadgroup` -------------------------------
# Tests that share an expensive module-scoped fixture run on one worker (one xdist group), so that the
# fixture is built once rather than once per worker. The DDP test, which starts two training
# processes talking over gloo, runs in that group too: it needs the trained checkpoints, and its
# worker runs nothing else meanwhile. Groups are only read with --dist loadgroup; a plain `pytest`
# runs everything serially as before.
XDIST_GROUP_BY_FIXTURE = {
    "trained": "programs",  # test_programs.py: train.py run twice in subprocesses
    "official_checkpoints": "official_checkpoints",  # test_checkpoints.py: full-size synthetic checkpoints
}
XDIST_GROUP_BY_NODEID = {
    "tests/test_programs.py::test_ddp_on_two_cpu_processes_trains_and_validates": "programs",
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = XDIST_GROUP_BY_NODEID.get(item.nodeid)
        group = group or next((g for name, g in XDIST_GROUP_BY_FIXTURE.items() if name in item.fixturenames), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config):
    # Under xdist each worker gets its share of the cores (2 workers on 2 cores: one thread each), and
    # so do the programs that tests start, instead of every worker running one thread per core.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)

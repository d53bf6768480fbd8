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
# The tests that share an expensive module-scoped fixture form one xdist group, run by one worker, so
# the fixture is built once instead of once per worker: test_programs.py's `trained` (train.py run
# twice in subprocesses; the DDP test, which starts two training processes talking over gloo, uses it
# and runs on that worker too), test_robustness.py's trained checkpoints and test_checkpoints.py's
# `official_checkpoints`. Groups go by node-id
# prefix so that the controller, which sees node ids only, can tell them too.
XDIST_GROUPS = {
    "programs": ("tests/test_programs.py::",),
    "robustness": ("tests/test_robustness.py::",),
    "official_checkpoints": ("tests/test_checkpoints.py::test_official_",),
}
XDIST_UNGROUPED = (  # tests of test_programs.py that do not use `trained`
    "tests/test_programs.py::test_bad_input_gives_a_one_line_error",
    "tests/test_programs.py::test_ddp_on_two_cpu_processes_trains_and_validates",
    "tests/test_programs.py::test_inference_py_restores_a_real_photo_end_to_end",
)


def xdist_group_of(nodeid: str) -> str | None:
    if nodeid.startswith(XDIST_UNGROUPED):
        return None
    return next((group for group, prefixes in XDIST_GROUPS.items() if nodeid.startswith(prefixes)), None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = xdist_group_of(item.nodeid)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # the groups first (a stable sort: every worker collects the same order), so that the longest
        # unit of work starts at once instead of last
        items.sort(key=lambda item: xdist_group_of(item.nodeid) is None)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own choice of scheduler
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup, with the groups above read from node ids.

    pytest-xdist 3.8 tells a test's group to its scheduler by renaming the test's node id, which pytest
    9.2 no longer lets it do (pytest-dev/pytest-xdist#1386): its own loadgroup then silently spreads a
    group over all workers.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class GroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # where xdist did add its "@group" suffix
                nodeid = nodeid[: nodeid.rfind("@")]
            return xdist_group_of(nodeid) or nodeid

    return GroupScheduling(config, log)


def pytest_configure(config):
    # Under xdist each worker gets its share of the cores (2 workers on 2 cores: one thread each), and
    # so do the programs that tests start, instead of every worker running one thread per core:
    # OpenMP threads that outnumber the cores wait on each other and make small operations many
    # times slower.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)

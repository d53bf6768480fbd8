"""Fixtures and pytest hooks shared by every test module.

Where shared test code lives:

* here: fixtures (`one_torch_thread`, `offline`, `free_port`, `planted_code`, `mmse_ckpt`,
  `arch_manifest`) and the xdist grouping; a module turns a fixture on for all its tests with
  `pytestmark = pytest.mark.usefixtures("one_torch_thread")`;
* helpers.py: plain code the tests import (`from helpers import build_method, write_images, …`): tiny
  networks, the methods built from `lightning_models.pmrf.METHODS`, stand-ins with known answers, files,
  and the programs run in-process or as subprocesses.

No test module imports another test module, and none imports this one.

Parameter lists come from the project's registries, as timm's tests/test_models.py does, so that a new
entry is tested without editing a test: `lightning_models.pmrf.METHODS` (and `STAGES`),
`degradations.DEGRADATION_NAMES`, `arch.NAMED_CONFIGS`, `utils.registry.WEIGHTS` and `NETWORKS`.

The reference's test.py keeps its name, which the standard library's regression-test package `test`
also has: `import test` gives whichever Python finds first (one already in sys.modules, or the first on
sys.path). Tests never import it by name; they load it by path, once per process, with
`helpers.load_program("test.py")` (the module `pmrf_test_program`), as they load every program file
they call in-process without importing it by name (scripts/gaussian_experiment.py too).

Tests that take more than about 8 s alone on a 2-core CPU are marked `@pytest.mark.slow`:
`make test-fast` leaves them out (`-m "not slow"`), `make test` runs everything.
"""

import os
import socket
from pathlib import Path

import pytest
import torch

# The fixtures import helpers when they run: the xdist controller, which runs no test, loads this file too.


@pytest.fixture(scope="session")
def arch_manifest() -> dict:
    from helpers import load_manifest

    return load_manifest("architectures.json")


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests: their tensors are tiny, and on a small, busy machine
    several threads mostly wait for each other (a two-point training takes ten times longer with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline(monkeypatch):
    """No test may reach the network: the download helpers of torch and facexlib all fail."""

    def fail(*args, **kwargs):
        raise AssertionError("a test tried to download something")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    monkeypatch.setattr("facexlib.utils.load_file_from_url", fail)
    monkeypatch.setattr("facexlib.utils.misc.load_file_from_url", fail)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def planted_code(tmp_path):
    """A payload to pickle into a weights file or cache (`torch.save({"weight": planted_code}, path)`);
    `planted_code.ran` tells whether reading the file ran it (helpers.PlantedCode)."""
    from helpers import PlantedCode

    return PlantedCode(tmp_path / "code_ran")


@pytest.fixture(scope="session")
def mmse_ckpt(tmp_path_factory) -> Path:
    """A tiny MMSE checkpoint as our MMSE stage writes it (helpers.save_lightning_mmse_checkpoint, seed 0)."""
    from helpers import save_lightning_mmse_checkpoint

    return save_lightning_mmse_checkpoint(tmp_path_factory.mktemp("mmse") / "mmse.ckpt")


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

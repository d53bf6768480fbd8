import json
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

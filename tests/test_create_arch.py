"""Every entry of the official key manifest, built through the public `create_arch`.

One parametrized test over the whole manifest (timm's tests/test_models.py pattern): every named
configuration and its condition / input-channel variants must have the reference's state-dict keys,
shapes and order, and register its parameters in that order (torch-ema stores its shadows as a list in
`parameters()` order). The networks are built on the meta device: the layout without the init cost.
"""

import pytest
import torch
from helpers import load_manifest, manifest_network

from arch import NAMED_CONFIGS

MANIFEST = load_manifest("architectures.json")
# the state-dict entries that are buffers, not parameters
BUFFER_SUFFIXES = ("time_emb.weight", "aug_emb.weight", "pos_emb.freqs", "relative_position_index", "attn_mask")


def test_manifest_covers_every_named_config():
    assert {entry.split("+")[0] for entry in MANIFEST} == set(NAMED_CONFIGS)
    assert {f"{name}+cond0" for name in NAMED_CONFIGS} <= set(MANIFEST)


@pytest.mark.parametrize("entry", list(MANIFEST))
def test_state_dict_keys_shapes_order_and_parameter_order(entry):
    with torch.device("meta"):
        net = manifest_network(entry)
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert got == list(MANIFEST[entry].items())
    assert [k for k, _ in net.named_parameters()] == [k for k in MANIFEST[entry] if not k.endswith(BUFFER_SUFFIXES)]

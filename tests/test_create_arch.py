"""Every entry of the official key manifest, built through the public `create_arch`."""

import pytest

from arch import NAMED_CONFIGS, create_arch


def build(entry: str):
    name, suffix = entry.split("+")
    if suffix.startswith("cond"):
        return create_arch(name, int(suffix[4:]))
    if suffix.startswith("in"):  # a network whose input has this many channels
        return create_arch({**NAMED_CONFIGS[name], "in_channels": int(suffix[2:])})
    raise AssertionError(f"unknown manifest entry {entry}")


def test_manifest_covers_all_named_configs(arch_manifest):
    assert {entry.split("+")[0] for entry in arch_manifest} == set(NAMED_CONFIGS)


@pytest.mark.parametrize(
    "entry",
    ["hdit_XL2+cond0", "hdit_XL2+cond3", "hdit_ImageNet256Sp4+cond0", "hdit_ImageNet256Sp4+cond3",
     "swinir_L+cond0", "swinir_M+cond0", "swinir_L+in1"],
)
def test_state_dict_keys_shapes_and_order(entry, arch_manifest):
    net = build(entry)
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert got == list(arch_manifest[entry].items())
    # torch-ema stores shadows in parameters() order: it must follow the state-dict order
    param_names = [k for k, _ in net.named_parameters()]
    assert param_names == [k for k in arch_manifest[entry] if k in dict(net.named_parameters())]

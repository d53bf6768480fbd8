"""Checks of an architecture config before anything is built: every field's type, then the network's size.

A config may come from a user's JSON file or from a downloaded folder's config.json, so it is checked as
any input is: a field of the wrong type is a one-line `ArchConfigError` naming the field, and a network
with more than `MAX_ELEMENTS` weights and buffers, more than `MAX_BLOCKS` blocks or more than
`MAX_LEVELS` levels is refused before a byte of it is allocated. The sizes are counted from the config
(`hdit_elements`, `swinir_elements`; tests check them against built networks). The limits are far above
the largest named config (hdit_ImageNet256Sp4: 160 million elements, swinir_L: 48 blocks); set
PMRF_MAX_ARCH_ELEMENTS to raise the first for a larger network of your own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from .hdit import ATTENTION_KINDS, AttentionSpec, HDiTConfig

MAX_ELEMENTS = int(os.environ.get("PMRF_MAX_ARCH_ELEMENTS") or 1_000_000_000)  # 4 GB of float32 weights
MAX_BLOCKS = 1000  # transformer layers, Swin blocks and mapping blocks together
MAX_LEVELS = 16
SWINIR_UPSAMPLE_FEATURES = 64  # arch.swinir.NUM_UPSAMPLE_FEATURES


class ArchConfigError(ValueError):
    """An architecture config that cannot or must not be built; the message names the field."""


# ------------------------------------------------------------------------------------- field types

Check = tuple[Callable[[Any], bool], str]  # (test, what the field must be)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(low: int) -> Check:
    return (lambda v: _is_int(v) and v >= low), f"a whole number >= {low}"


def whole_list(low: int, length: int | None = None) -> Check:
    def test(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and all(_is_int(v) and v >= low for v in value) and (
            length is None or len(value) == length)

    count = f"{length} " if length else ""
    return test, f"a list of {count}whole numbers >= {low}"


def rate() -> Check:
    return (lambda v: _is_number(v) and 0 <= v < 1), "a number in [0, 1)"


def rate_or_rates() -> Check:
    def test(value: Any) -> bool:
        values = value if isinstance(value, (list, tuple)) else [value]
        return all(_is_number(v) and 0 <= v < 1 for v in values)

    return test, "a number in [0, 1) or a list of them"


def optional(check: Check) -> Check:
    return (lambda v: v is None or check[0](v)), f"null or {check[1]}"


def positive_number() -> Check:
    return (lambda v: _is_number(v) and v > 0), "a number > 0"


def of_type(kind: type, what: str) -> Check:
    return (lambda v: isinstance(v, kind)), what


HDIT_FIELDS: dict[str, Check] = {
    "widths": whole_list(1),
    "depths": whole_list(0),
    "self_attns": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(e, Mapping) for e in v),
                   'a list of objects such as {"type": "global", "d_head": 64}'),
    "patch_size": whole_list(1, 2),
    "d_ffs": optional(whole_list(1)),
    "dropout_rate": rate_or_rates(),
    "mapping_width": ((lambda v: _is_int(v) and v >= 2 and v % 2 == 0), "an even whole number >= 2"),
    "mapping_depth": whole(0),
    "mapping_d_ff": optional(whole(1)),
    "mapping_dropout_rate": rate(),
    "in_channels": whole(1),
    "out_channels": whole(1),
}
HDIT_REQUIRED = ("widths", "depths", "self_attns")
ATTENTION_FIELDS: dict[str, Check] = {
    "type": ((lambda v: v in ATTENTION_KINDS), f"one of {', '.join(ATTENTION_KINDS)}"),
    "d_head": ((lambda v: _is_int(v) and v >= 8 and v % 8 == 0), "a whole multiple of 8"),
    "kernel_size": ((lambda v: _is_int(v) and v >= 1 and v % 2 == 1), "an odd whole number >= 1"),
    "window_size": whole(1),
}
SWINIR_FIELDS: dict[str, Check] = {
    "in_channels": whole(1),
    "out_channels": whole(1),
    "embed_dim": whole(1),
    "depths": whole_list(1),
    "num_heads": whole_list(1),
    "window_size": whole(2),
    "mlp_ratio": positive_number(),
    "sf": whole(1),
    "resi_connection": of_type(str, "'1conv' or '3conv'"),
    "drop_path_rate": rate(),
    "img_size": whole(1),
    "qkv_bias": of_type(bool, "true or false"),
    "patch_norm": of_type(bool, "true or false"),
    "upsampler": of_type(str, "'nearest+conv'"),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_fields(kind: str, config: Mapping, fields: dict[str, Check], required: tuple[str, ...] = ()) -> None:
    """Every field of `config` known and of the right type, the required ones present (else one line)."""
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ArchConfigError(f"{kind} config: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    missing = [name for name in required if name not in config]
    if missing:
        raise ArchConfigError(f"{kind} config: missing field(s) {missing}")
    for name, value in config.items():
        test, what = fields[name]
        if not test(value):
            raise ArchConfigError(f"{kind} config: field '{name}' must be {what}, got {_shown(value)}")


def check_hdit_fields(config: Mapping) -> None:
    check_fields("hdit", config, HDIT_FIELDS, HDIT_REQUIRED)
    for index, entry in enumerate(config["self_attns"]):
        check_fields(f"hdit config: self_attns[{index}]:", entry, ATTENTION_FIELDS, ("type",))


def check_swinir_fields(config: Mapping) -> None:
    check_fields("swinir", config, SWINIR_FIELDS)


# --------------------------------------------------------------------------------------------- size


def hdit_elements(config: Mapping, condition_channels: int = 0) -> int:
    """Weights and buffers of the HDiT `config` describes (fields as checked by `check_hdit_fields`)."""
    c = HDiTConfig(**config)
    widths, depths, attns = c.widths, c.depths, c.self_attns
    d_ffs = c.d_ffs or [3 * w for w in widths]
    ph, pw = c.patch_size
    mw = c.mapping_width
    m_ff = c.mapping_d_ff or 3 * mw
    in_ch = c.in_channels + condition_channels
    out_ch = c.out_channels
    total = in_ch * ph * pw * widths[0] + widths[0] + widths[0] * out_ch * ph * pw  # patch in, out norm, out
    total += 2 * mw * mw + mw // 2 * (1 + 9)  # time / aug projections and their Fourier buffers
    total += 2 * mw + c.mapping_depth * (mw + 3 * mw * m_ff)  # mapping network
    levels = len(widths)
    for index, (width, depth, d_ff, attn) in enumerate(zip(widths, depths, d_ffs, attns)):
        layer = width * mw + 3 * width * d_ff  # feed-forward: AdaRMSNorm, GEGLU up, down
        if attn.get("type") != "none":
            d_head = attn.get("d_head", AttentionSpec.d_head)
            # head scales, AdaRMSNorm, qkv, out projection, RoPE frequencies
            layer += width // d_head + width * mw + 4 * width * width + width // d_head * (d_head // 8)
        total += (1 if index == levels - 1 else 2) * depth * layer
    for a, b in zip(widths, widths[1:]):
        total += 4 * a * b + 4 * a * b + 1  # token merge, token split and its blend factor
    return total


def swinir_elements(config: Mapping, condition_channels: int = 0) -> int:
    """Weights and buffers of the SwinIR `config` describes (defaults of arch.swinir.SwinIR)."""
    e = config.get("embed_dim", 180)
    depths = config.get("depths", [6] * 8)
    heads = config.get("num_heads", [6] * 8)
    ws = config.get("window_size", 8)
    sf = config.get("sf", 8)
    grid = config.get("img_size", 64)
    hidden = int(e * config.get("mlp_ratio", 2.0))
    in_ch = config.get("in_channels", 3) + condition_channels
    out_ch = config.get("out_channels", 3)
    qkv_bias = config.get("qkv_bias", True)
    if config.get("resi_connection", "1conv") == "3conv":
        q = e // 4
        residual = e * q * 9 + q + q * q + q + q * e * 9 + e
    else:
        residual = e * e * 9 + e
    feats = SWINIR_UPSAMPLE_FEATURES
    total = in_ch * sf * sf * e * 9 + e + (2 * e if config.get("patch_norm", True) else 0)
    total += 2 * e + residual  # final norm, conv after the body
    upsamples = sf.bit_length() - 1  # log2(sf) nearest+conv steps, then conv_hr
    total += e * feats * 9 + feats + (upsamples + 1) * (feats * feats * 9 + feats)
    total += feats * out_ch * 9 + out_ch + (3 if in_ch == 3 else 1)  # last conv, RGB mean buffer
    for depth, n_heads in zip(depths, heads):
        block = 4 * e + (2 * ws - 1) ** 2 * n_heads + ws**4 + 3 * e * e + (3 * e if qkv_bias else 0) + e * e + e
        block += 2 * e * hidden + hidden + e
        total += depth * block + depth // 2 * grid * grid * ws * ws + residual  # + shifted masks, group conv
    return total


def check_size(kind: str, config: Mapping, condition_channels: int = 0) -> None:
    """Refuse (one line) a network beyond MAX_LEVELS levels, MAX_BLOCKS blocks or MAX_ELEMENTS elements."""
    if kind == "hdit":
        depths = config["depths"]
        if len(depths) > MAX_LEVELS:
            raise ArchConfigError(f"hdit config: {len(depths)} levels (entries of 'depths'), more than the "
                                  f"{MAX_LEVELS} allowed")
        blocks = sum(2 * d for d in depths[:-1]) + sum(depths[-1:]) + HDiTConfig(**config).mapping_depth
    else:
        blocks = sum(config.get("depths", [6] * 8))
    if blocks > MAX_BLOCKS:
        raise ArchConfigError(f"{kind} config: 'depths' make {blocks:,} blocks, more than the {MAX_BLOCKS} "
                              "allowed (the largest named config has 48)")
    count = hdit_elements if kind == "hdit" else swinir_elements
    elements = count(config, condition_channels)
    if elements > MAX_ELEMENTS:
        raise ArchConfigError(
            f"{kind} config: the network would hold {elements:,} weights and buffers "
            f"({elements * 4 / 2**30:,.1f} GiB in float32), more than the limit of {MAX_ELEMENTS:,}; "
            "check the widths, depths, window and image sizes, or set PMRF_MAX_ARCH_ELEMENTS for a network "
            "this large"
        )

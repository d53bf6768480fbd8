"""Pieces shared by the programs: checked argument types, the options several programs take, devices.

Every number a program takes goes through one of the checked types below, so a bad count is refused
when the arguments are parsed (``error: argument --batch_size: expected a whole number >= 1, got 0``)
instead of failing, or silently doing something else, later.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from utils.images import InputError, writable_folder

# ------------------------------------------------------------------------------------ checked types


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def int_range(low: int | None = None, high: int | None = None):
    """An argparse type: a whole number in [low, high] (either bound may be open)."""
    what = "a whole number" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")

    def parse(text: str) -> int:
        value = _number(text, int, what)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = "int"
    return parse


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite number in [low, high] ((low, high] with `low_open`)."""
    bound = "> " if low_open else ">= "
    what = "a number" + (f" {bound}{low:g}" if low is not None else "") + (f" <= {high:g}" if high is not None else "")

    def parse(text: str) -> float:
        value = _number(text, float, what)
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
positive_float = float_range(0.0, low_open=True)
non_negative_float = float_range(0.0)
probability = float_range(0.0, 1.0)
seed_int = int_range(0, 2**63 - 1)


def name_part(value: str) -> str:
    """An argparse type: text that becomes part of output file names (--suffix); path separators and
    '..' are refused, so that no output lands outside its folder."""
    from utils.images import check_name_part

    try:
        return check_name_part(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def arch_argument(value: str) -> str:
    """A named architecture or a path to a JSON config (checked at parse time)."""
    from arch import NAMED_CONFIGS

    if value in NAMED_CONFIGS:
        return value
    if value.endswith(".json"):
        if not Path(value).is_file():
            raise argparse.ArgumentTypeError(f"architecture config file {value} does not exist")
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: use one of {sorted(NAMED_CONFIGS)} or a path to a .json config")


def existing_folder(value: str) -> str:
    path = Path(value)
    if path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is a file; give the folder that holds the images")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: folder does not exist")
    return value


def existing_path(value: str) -> str:
    """An image file or a folder that exists."""
    if not Path(value).exists():
        raise argparse.ArgumentTypeError(f"{value}: no such file or folder")
    return value


# -------------------------------------------------------------------------------- shared options


def add_checkpoint_arguments(parser: argparse.ArgumentParser, required: bool = False, raw_by_default: bool = False) -> None:
    """--ckpt_path, --ckpt_path_is_huggingface and the choice of weights (inference.py, test.py, app.py).

    Inference uses the EMA weights of a .ckpt unless --use_raw_weights, as the reference's inference.py;
    with `raw_by_default` (test.py, as the reference's testing) the raw ones unless --use_ema, and
    --use_raw_weights is accepted and changes nothing.
    """
    from utils import registry

    official = registry.weights_entry("pmrf_blind_face")
    default = str(registry.default_path("pmrf_blind_face"))
    parser.add_argument(
        "--ckpt_path",
        required=required,
        default=None if required else default,
        help="Lightning .ckpt, save_pretrained folder, or Hub id with --ckpt_path_is_huggingface"
        + ("" if required else f" (default: the {official.what}, {default}; its Hub id is {official.hub_id})"),
    )
    parser.add_argument("--ckpt_path_is_huggingface", action="store_true", help="--ckpt_path is a Hugging Face Hub id")
    if raw_by_default:
        parser.add_argument("--use_ema", action="store_true",
                            help="use the EMA weights of a .ckpt (default: the raw weights, as the reference's testing)")
        parser.add_argument("--use_raw_weights", action="store_true", help="the default; kept for older command lines")
    else:
        parser.add_argument("--use_raw_weights", action="store_true", help="ignore the EMA weights of a .ckpt")


def add_runtime_arguments(parser: argparse.ArgumentParser, compile_help: str | None = None) -> None:
    """--device, --bf16, --compile and --attention_backend (inference.py, app.py)."""
    from utils.auto_compile import add_compile_argument

    parser.add_argument("--device", default=None, help="auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast, precision bf16-mixed (CUDA; about 1.3-2x faster)")
    add_compile_argument(parser, compile_help)
    add_attention_backend_argument(parser)


def add_attention_backend_argument(parser: argparse.ArgumentParser) -> None:
    """--attention_backend (inference.py, app.py, train.py): the neighbourhood-attention kernel."""
    from arch.attention import BACKENDS

    parser.add_argument(
        "--attention_backend",
        choices=BACKENDS,
        default=None,
        help="neighbourhood-attention kernel (default auto: natten with fused kernels or flex on CUDA, torch elsewhere)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--suffix, --ext and --jpeg_quality: how restored images are named and encoded (GFPGAN's habits)."""
    parser.add_argument(
        "--suffix", type=name_part, default=None, help="add _SUFFIX to the restored images' names (default: none)"
    )
    parser.add_argument(
        "--ext", choices=("auto", "png", "jpg"), default="auto", help="format of the outputs (auto: the input's)"
    )
    parser.add_argument(
        "--jpeg_quality",
        type=int_range(1, 100),
        default=75,
        help="JPEG quality of .jpg outputs (default 75, what torchvision's save_image writes)",
    )


def add_fidelity_weight_argument(parser: argparse.ArgumentParser) -> None:
    """-w / --fidelity_weight in [0, 1] (inference.py, test.py; a slider in app.py)."""
    parser.add_argument(
        "-w",
        "--fidelity_weight",
        type=probability,
        default=0.0,
        help="output (1 - w)·PMRF + w·posterior mean: 0 (default) is PMRF, the reference's output; 1 the "
        "posterior mean (lowest MSE, blurrier). It moves along the distortion-perception curve at no extra "
        "cost (models with a posterior-mean network only)",
    )


# ----------------------------------------------------------------------------------------- devices


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(requested: str | torch.device | None, prefer_mps: bool = True) -> torch.device:
    """`requested`, or for None / "auto" CUDA, else (with `prefer_mps`) Apple MPS, else CPU.

    Asking for CUDA where there is none is a ValueError rather than a failure deep inside.
    """
    if requested is None or str(requested) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device(default_device() if prefer_mps else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested}: not a device name (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def accelerator_on_gpu(accelerator: str) -> bool:
    """Whether Lightning's --accelerator runs on CUDA: gpu / cuda, or auto where CUDA is available."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_devices(accelerator: str, devices: int | None, num_gpus: int) -> tuple[str, int]:
    """(accelerator, device count): an explicit --devices wins; on GPU use --num_gpus (capped); else 1."""
    if devices is not None:
        return accelerator, devices
    if not accelerator_on_gpu(accelerator):
        return accelerator, 1
    available = torch.cuda.device_count()
    if num_gpus > available:
        print(f"warning: --num_gpus {num_gpus} but only {available} GPU(s) visible; using {available}")
    return accelerator, max(1, min(num_gpus, available))


# ------------------------------------------------------------------------------------------ output


def fail(message: str, code: int = 2) -> None:
    """Stop a program with a one-line error instead of a traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def check_writable_folder(folder: str | os.PathLike, option: str = "--output_dir") -> Path:
    """Create `folder` if needed and make sure files can be written in it, before any compute
    (utils.images.writable_folder); a problem ends the program with one line naming the option."""
    try:
        return writable_folder(folder, option)
    except InputError as error:
        fail(str(error))


def wandb_configured() -> bool:
    """True when Weights & Biases can log without asking anything: an API key, a login or offline mode."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False

"""Using a trained model: loading it ready for inference, and restoring aligned faces with it.

* `load_model` (inference.py, test.py, app.py) and `prepare_for_inference` (attention kernel, compile:
  `restorer.set_up_networks`);
* `FaceRestorer`: the `Restorer` the whole-photo pipeline, videos and the web demo hand their aligned faces
  to (its `bf16` is precision 'bf16-mixed');
* `restore_aligned`: a folder (or one file) of aligned faces, the fast way: DataLoader workers decode
  into pinned memory, the restorer restores batch after batch on the GPU, and background threads encode
  and write the results, so the GPU never waits on a file;
* `read_model_config` and `input_size_problem`: whether the model can take an input size, told from
  the checkpoint's recorded configuration before the model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils import registry
from utils.images import (
    ImageReadError,
    ImageWriter,
    RunInterrupted,
    check_name_part,
    displayed_size,
    output_name,
    output_stems,
    read_rgb,
)
from utils.precision import bf16_flag
from utils.weights import read_weights_file

from .restorer import Restoration, Restorer, set_up_networks

__all__ = ["FaceRestorer", "Restoration", "Restorer", "load_model", "prepare_for_inference", "restore_aligned"]

# Aligned inputs larger than this many times the native size are refused (a whole photo, most likely).
MAX_ALIGNED_SCALE = 2
# Chooses the attention kernel and compiles a loaded model's networks (restorer.set_up_networks).
prepare_for_inference = set_up_networks


def load_model(
    ckpt_path: str | os.PathLike,
    huggingface: bool = False,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    keep_ema: bool = False,
    **overrides,
):
    """A model in eval mode on `device`, from a Lightning .ckpt, a save_pretrained folder or a Hub id.

    With `use_ema` the EMA weights of a Lightning checkpoint become the model's weights (Hub and saved
    folders already hold EMA weights). The separate EMA copy is then dropped, so inference holds one set
    of weights, unless `keep_ema` (test.py chooses raw or EMA weights later). Raises FileNotFoundError /
    ValueError / RuntimeError with a message that names the file.
    """
    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    path = Path(ckpt_path)
    if huggingface or path.is_dir():
        model = MMSERectifiedFlow.from_pretrained(str(ckpt_path), **overrides)
    else:
        if not path.is_file():
            hub_id = registry.weights_entry("pmrf_blind_face").hub_id
            raise FileNotFoundError(
                f"checkpoint {ckpt_path} not found. Put the official checkpoint there, or use "
                f"--ckpt_path {hub_id} --ckpt_path_is_huggingface"
            )
        model = MMSERectifiedFlow.load_from_checkpoint(path, map_location="cpu", **overrides)
        if use_ema:
            model.copy_ema_to_model()
        if not keep_ema:
            model.ema = None
    return model.eval().requires_grad_(False).to(device)


def read_model_config(ckpt_path: str | os.PathLike, huggingface: bool = False) -> dict[str, Any] | None:
    """The constructor arguments recorded with a checkpoint, read without building the model: the
    hyper-parameters of a Lightning .ckpt (memory-mapped, so its weights are not read), or config.json of a
    saved folder or Hub repo. None when they cannot be read this way; `load_model` then reports why."""
    path = Path(ckpt_path)
    try:
        if huggingface or path.is_dir():
            from lightning_models.checkpoints import HF_CONFIG_NAME, read_config

            if path.is_dir():
                return read_config(path / HF_CONFIG_NAME)
            from huggingface_hub import hf_hub_download

            return read_config(Path(hf_hub_download(str(ckpt_path), HF_CONFIG_NAME)))
        if path.suffix == ".safetensors":
            return None  # bare weights: no hyper-parameters to read
        checkpoint = read_weights_file(path, "cpu", mmap=True)
        config = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
        return dict(config) if isinstance(config, Mapping) else None
    except Exception:  # unreadable, offline, an old (non-zip) file: the loader gives the one-line error
        return None


def input_size_problem(config: Mapping[str, Any] | None, size: int) -> str | None:
    """Why the networks a checkpoint's `config` describes cannot take size×size inputs, or None (also when
    the config does not say). The networks are built on the meta device: no memory, no weights."""
    from arch import create_arch

    for key in ("arch", "mmse_model_arch"):
        arch = (config or {}).get(key)
        if arch is None:
            continue
        try:
            with torch.device("meta"):
                network = create_arch(arch)
        except Exception:  # a config that cannot be built: load_model says so
            continue
        try:
            network.check_input_size(size, size)
        except ValueError as error:
            return str(error)
    return None


def native_size(model) -> int | None:
    """The image size the model was trained at (512 for the blind-face model), if known."""
    return registry.native_size(model.hparams.get("arch") if hasattr(model, "hparams") else None)


NON_FINITE_OUTPUT = ("the model's output holds NaN or infinite values (its weights or the precision cannot "
                     "handle this input): not written")


def finite_images(*batches: torch.Tensor) -> list[bool]:
    """Per image (dim 0), whether every value in all `batches` is finite: one reduction per batch, on
    the host copies the outputs are written from (no extra device sync)."""
    flags = torch.stack([torch.isfinite(batch).flatten(1).all(1) for batch in batches]).all(0)
    return flags.tolist()


class FaceRestorer(Restorer):
    """The restorer of aligned faces (N, C, H, W) in [0, 1] that whole photos, videos and the app use:
    a `Restorer` whose `bf16` is precision 'bf16-mixed'.

    `seed` makes the source noise reproducible (one generator, advanced batch after batch).
    `fidelity_weight` w gives (1 − w)·PMRF + w·posterior mean (0: PMRF, 1: the posterior mean).
    """

    def __init__(
        self, model, num_flow_steps: int = 25, seed: int | None = None, bf16: bool = False, fidelity_weight: float = 0.0
    ):
        super().__init__(model, num_flow_steps, seed, bf16_flag(bf16), fidelity_weight)


# ----------------------------------------------------------------------------- aligned folders


@dataclass
class AlignedOptions:
    num_flow_steps: int = 25
    batch_size: int = 64
    seed: int | None = 0
    precision: str = "32"  # utils.precision's names: '32', 'bf16-mixed' (inference.py --bf16), '16-mixed'
    num_workers: int = 0
    input_size: int | None = None  # None: the model's native size; 0: no resizing
    suffix: str | None = None
    ext: str = "auto"
    jpeg_quality: int = 75
    pad_batches: bool = False  # keep every batch the same size (a compiled network never recompiles)
    fidelity_weight: float = 0.0  # (1 − w)·PMRF + w·posterior mean in restored_images/
    skip_existing: bool = False  # inputs whose outputs are all there already are not restored again

    def __post_init__(self):
        if self.suffix:
            check_name_part(self.suffix)


@dataclass
class AlignedReport:
    written: int = 0  # inputs restored
    resized: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # input name -> output name, where they differ
    existing: int = 0  # inputs left alone by skip_existing


class AlignedFaces(Dataset):
    """Aligned faces read upright as float tensors, resized to `size` (bicubic) when it is set.

    An image that cannot be decoded comes back as {'error': message} (the loop lists it as skipped).
    """

    def __init__(self, paths: list[Path], size: int | None):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            image = read_rgb(path)
        except ImageReadError as error:
            return {"name": path.name, "error": str(error)}
        if self.size and image.shape[:2] != (self.size, self.size):
            image = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BICUBIC))
        # np.array: a writable copy (PIL's arrays are read-only, which torch.from_numpy warns about)
        y = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)
        return {"name": path.name, "y": y}


def collate_faces(items: list[dict]) -> dict:
    good = [item for item in items if "y" in item]
    return {
        "y": torch.stack([item["y"] for item in good]) if good else None,
        "names": [item["name"] for item in good],
        "errors": [(item["name"], item["error"]) for item in items if "error" in item],
    }


def plan_batches(paths: list[Path], size: int | None, check_size, batch_size: int):
    """(batches of indices of same-size images, images resized, skipped (name, reason))."""
    groups: dict[tuple[int, int], list[int]] = {}
    skipped, resized = [], 0
    for index, path in enumerate(paths):
        try:
            width, height = displayed_size(path)
        except ImageReadError as error:  # unreadable header: listed, never fatal
            skipped.append((path.name, str(error)))
            continue
        limit = MAX_ALIGNED_SCALE * (size or 512)
        if max(width, height) > limit:
            skipped.append((path.name, f"{width}×{height} is far larger than an aligned face ({size or 512} px); "
                                       "for ordinary photos use --whole_image"))
            continue
        if size:
            resized += (width, height) != (size, size)
            width = height = size
        else:
            try:
                check_size(height, width)
            except ValueError as error:
                skipped.append((path.name, f"{width}×{height}: {error}"))
                continue
        groups.setdefault((height, width), []).append(index)
    batches = [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
    return batches, resized, skipped


def aligned_output_names(paths: list[Path], options: AlignedOptions) -> dict[str, str]:
    """The output file name of every input (one naming rule for every mode: utils.images.output_stems)."""
    stems = output_stems([path.name for path in paths], options.ext)
    return {
        path.name: output_name(stems[path.name] + path.suffix, options.suffix, options.ext) for path in paths
    }


def restore_aligned(model, paths: list[Path], output_dir: Path, options: AlignedOptions) -> AlignedReport:
    """Restore aligned faces into output_dir/restored_images/ (and restored_images_posterior_mean/ for
    models with a posterior-mean network), under the inputs' names; inputs that would write the same file
    are told apart (`AlignedReport.renamed`).

    Ctrl-C raises `RunInterrupted` once the images already restored are written (whole files; a second
    Ctrl-C drops those not started); its message says how many files were written.
    """
    restorer = Restorer(model, options.num_flow_steps, options.seed, options.precision, options.fidelity_weight)
    device = restorer.device
    size = native_size(model) if options.input_size is None else options.input_size
    folders = {"xhat": output_dir / "restored_images"}
    if restorer.has_posterior_mean:
        folders["posterior_mean"] = output_dir / "restored_images_posterior_mean"
    names = aligned_output_names(paths, options)
    renamed = {name: out for name, out in names.items() if out != output_name(name, options.suffix, options.ext)}
    existing = 0
    if options.skip_existing:
        done = {path for path in paths if all((folder / names[path.name]).is_file() for folder in folders.values())}
        existing, paths = len(done), [path for path in paths if path not in done]
    batches, resized, skipped = plan_batches(paths, size, model.check_input_size, options.batch_size)
    report = AlignedReport(resized=resized, skipped=skipped, renamed=renamed, existing=existing)
    if not batches:
        return report
    loader = DataLoader(
        AlignedFaces(paths, size),
        batch_sampler=batches,
        num_workers=options.num_workers,
        collate_fn=collate_faces,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    writer = ImageWriter(options.jpeg_quality)
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="restoring", unit="batch", total=len(batches)):
                report.skipped.extend(batch["errors"])
                if batch["y"] is None:
                    continue
                y = batch["y"].to(device, non_blocking=True)
                count = y.shape[0]
                if options.pad_batches and count < options.batch_size:
                    y = torch.cat([y, y[-1:].expand(options.batch_size - count, -1, -1, -1)])
                sample = restorer.sample(y)
                outputs = {key: images[:count].float().cpu() for key, images in
                           (("xhat", sample.xhat), ("posterior_mean", sample.posterior_mean))
                           if images is not None and key in folders}
                finite = finite_images(*outputs.values())
                for index, name in enumerate(batch["names"]):
                    if not finite[index]:
                        report.skipped.append((name, NON_FINITE_OUTPUT))
                        continue
                    for key, images in outputs.items():
                        writer.submit(images[index], folders[key] / names[name])
                    report.written += 1
        writer.close()
    except KeyboardInterrupt:
        try:
            writer.close()  # what was restored is written (whole files); a second Ctrl-C drops the rest
        except KeyboardInterrupt:
            writer.abort()
        raise RunInterrupted(
            f"interrupted: {writer.written} image file(s) were written into {output_dir}; run again with "
            "--skip_existing to restore the rest"
        ) from None
    except BaseException:
        writer.abort()
        raise
    return report

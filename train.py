"""Train PMRF or one of its baselines. Examples: scripts/train/ (the paper's runs).

One machine:   python train.py --stage flow --arch hdit_XL2 ... --num_gpus 4
Several nodes: torchrun --nnodes 2 --nproc_per_node 8 ... train.py ... --num_nodes 2 --num_gpus 8
               (or srun under SLURM); --train_batch_size and --num_workers are totals over all processes.
"""

from __future__ import annotations

import argparse
import os
import socket
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler

from data import ImageFolderDataset, make_transform, scan_images
from degradations import DEGRADATION_NAMES, create_degradation, degradation_channels
from lightning_models.build import method_of, self_contained
from lightning_models.checkpoints import network_state, read_training_checkpoint
from lightning_models.finite_guard import NAN_POLICIES, FiniteGuard, NonFiniteTrainingError
from lightning_models.flow import T_SCHEDULES
from lightning_models.mmse_rectified_flow import STAGES, MMSERectifiedFlow
from lightning_models.restorer import set_up_networks
from utils.auto_compile import should_compile
from utils.cli import (
    accelerator_on_gpu,
    add_attention_backend_argument,
    arch_argument,
    check_writable_folder,
    existing_folder,
    fail,
    float_range,
    int_range,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    resolve_devices,
    seed_int,
    wandb_configured,
)
from utils.images import WriteError, write_atomic
from utils.precision import PRECISIONS, configure_torch
from utils.weights import MissingWeightsError, WeightsReadError, state_dict_mismatch

# Hyper-parameters a resumed run may change: they apply from the resumed step on (and train.py says so).
RESUMABLE_CHANGES = ("lr", "weight_decay", "betas", "ema_decay", "num_flow_steps", "eps", "t_schedule",
                     "mmse_noise_std")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: Lightning's own (32-true), as in the reference; the scripts pass bf16-mixed")
    p.add_argument("--stage", choices=STAGES, required=True)
    p.add_argument("--conditional", action="store_true", help="condition the flow on y or on the MMSE estimate")
    p.add_argument("--degradation", choices=DEGRADATION_NAMES, required=True)
    p.add_argument("--train_data_root", type=existing_folder, required=True)
    p.add_argument("--source_samples_train_data_root", type=existing_folder, default=None,
                   help="precomputed source images (reflow), same file names as the training images")
    p.add_argument("--val_data_root", type=existing_folder, default=None)
    p.add_argument("--arch", type=arch_argument, required=True, help="named architecture or JSON config path")
    p.add_argument("--mmse_model_ckpt_path", default=None)
    p.add_argument("--mmse_model_arch", type=arch_argument, default=None)
    p.add_argument("--source_noise_std", type=non_negative_float, default=0.0, help="sigma_s, noise added to the source")
    p.add_argument("--num_flow_steps", type=int_range(1, 10_000), default=50, help="Euler steps used in validation")
    p.add_argument("--num_gpus", type=positive_int, default=4, help="GPUs per node when training on GPU (see --devices)")
    p.add_argument("--num_nodes", type=positive_int, default=1, help="machines (multi-node DDP under torchrun or SLURM)")
    p.add_argument("--check_val_every_n_epoch", type=positive_int, default=1)
    p.add_argument("--train_batch_size", type=positive_int, default=256, help="global batch size (all processes)")
    p.add_argument("--val_batch_size", type=positive_int, default=32, help="per device")
    p.add_argument("--num_workers", type=non_negative_int, default=10, help="data-loading workers in total")
    p.add_argument("--img_size", type=positive_int, default=512)
    p.add_argument("--max_epochs", type=int_range(-1), default=1000)
    p.add_argument("--max_steps", type=int_range(-1), default=-1)
    p.add_argument("--ema_decay", type=float_range(-1.0, 1.0), default=0.9999, help="-1 disables the EMA")
    p.add_argument("--eps", type=float_range(0.0, 1.0), default=0.0, help="t_min: the flow runs on [eps, 1]")
    p.add_argument("--t_schedule", choices=T_SCHEDULES, default="stratified_uniform")
    p.add_argument("--weight_decay", type=non_negative_float, default=1e-2)
    p.add_argument("--lr", type=positive_float, default=5e-4)
    p.add_argument("--betas", type=probability, nargs=2, default=(0.9, 0.95), metavar=("BETA1", "BETA2"))
    p.add_argument("--wandb_project_name", default="PMRF")
    p.add_argument("--wandb_group", default=None)
    p.add_argument("--wandb_id", default=None)
    p.add_argument("--resume_from_ckpt", default=None, help="checkpoint path, or 'last' for OUTPUT_DIR's last.ckpt")
    p.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, mps, ...")
    p.add_argument("--devices", type=positive_int, default=None, help="devices per node (default: --num_gpus on GPU, else 1)")
    p.add_argument("--seed", type=seed_int, default=None)
    p.add_argument("--logger", choices=["wandb", "csv", "tensorboard"], default=None,
                   help="default: wandb when it is configured (API key, login or offline mode) and reachable, else csv")
    p.add_argument("--output_dir", default="outputs", help="checkpoints and local logs go here")
    p.add_argument("--log_every_n_steps", type=positive_int, default=50)
    p.add_argument("--compile", dest="compile", action="store_const", const="on", default="auto",
                   help="torch.compile the trained network, also off GPU (default: the flow network on GPU)")
    p.add_argument("--no_compile", dest="compile", action="store_const", const="off",
                   help="train eagerly (no compile), also on GPU")
    add_attention_backend_argument(p)
    p.add_argument("--skip_bad_images", action="store_true",
                   help="train without the unreadable or odd-sized images that the start-up scan lists")
    p.add_argument("--use_ema", action="store_true",
                   help="validate with the EMA weights (default: the raw weights, as the reference's validation)")
    p.add_argument("--nan_policy", choices=NAN_POLICIES, default="stop",
                   help="at a NaN or infinite loss or gradient: stop (default) or skip that step")
    p.add_argument("--offline", action="store_true",
                   help="never download: validation skips FID and IS (one warning) when the Inception weights are not here")
    p.add_argument("--metrics_ckpt_dir", default=None,
                   help="folder (or file) of the Inception weights for validation's FID and IS, looked in first "
                        "(then evaluation/metrics_ckpt/ and torch's hub cache; as the evaluation programs' option)")
    return p


def compiles(requested: str, accelerator: str, stage: str) -> bool:
    """--compile on/off decide; by default the flow network (HDiT) is compiled when training on GPU,
    as the reference compiles its small kernels by default (the posterior-mean stage stays eager)."""
    flow_on_gpu = stage != "mmse" and accelerator_on_gpu(accelerator)
    return should_compile(requested, "cuda" if flow_on_gpu else "cpu")


# ------------------------------------------------------------------------------------------ logging


def wandb_reachable(timeout: float = 5.0) -> bool:
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def choose_logger(requested: str | None) -> str:
    """The logger kind. W&B asked for explicitly but not usable ends the program at once with one line;
    W&B chosen by default falls back to the CSV logger with a warning."""
    if requested not in (None, "wandb"):
        return requested
    usable = wandb_configured() and wandb_reachable()
    if requested == "wandb" and not usable:
        fail("--logger wandb: Weights & Biases is not configured (no API key or login) or not reachable; "
             "run `wandb login`, set WANDB_MODE=offline, or use --logger csv")
    if requested is None and wandb_configured() and not usable:
        warnings.warn("Weights & Biases is configured but not reachable: logging to CSV instead", stacklevel=2)
    return "wandb" if usable else "csv"


def make_logger(args, output_dir: Path, kind: str | None = None):
    kind = kind or choose_logger(args.logger)
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project=args.wandb_project_name, group=args.wandb_group, id=args.wandb_id,
                           resume="allow" if args.wandb_id else None, save_dir=str(output_dir))
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(output_dir), name="tensorboard")
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(output_dir), name="csv")


# --------------------------------------------------------------------------------------------- data


def make_loaders(args, processes: int):
    if args.train_batch_size % processes:
        fail(f"--train_batch_size {args.train_batch_size} is not divisible by the {processes} processes (nodes × devices)")
    workers = args.num_workers // processes
    degradation = create_degradation(args.degradation)
    transform = make_transform(args.img_size)
    try:
        train_set = ImageFolderDataset(args.train_data_root, degradation, transform, args.source_samples_train_data_root)
        val_set = ImageFolderDataset(args.val_data_root, degradation, transform) if args.val_data_root else None
        scan_images(train_set, args.img_size, args.skip_bad_images, "--train_data_root", workers)
        if val_set is not None:
            scan_images(val_set, args.img_size, args.skip_bad_images, "--val_data_root", workers)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    common = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    per_process = args.train_batch_size // processes
    if len(train_set) < per_process:
        fail(f"--train_data_root has {len(train_set)} image(s), fewer than one batch of {per_process} per process; "
             "lower --train_batch_size")
    if processes == 1:
        # The reference always runs DDP, so even on one GPU Lightning shuffles with a DistributedSampler
        # (seed 0, or --seed, reshuffled each epoch by set_epoch). One process here gets the same order.
        sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True,
                                     seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        train = DataLoader(train_set, batch_size=per_process, sampler=sampler, drop_last=True, **common)
    else:  # Lightning puts in the DistributedSampler itself
        train = DataLoader(train_set, batch_size=per_process, shuffle=True, drop_last=True, **common)
    val = DataLoader(val_set, batch_size=args.val_batch_size, shuffle=False, **common) if val_set else None
    return train, val


# -------------------------------------------------------------------------------------- checkpoints


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file in the target folder and renamed: a full disk or a
    kill never leaves a truncated `epoch=…ckpt` or `last.ckpt` under its final name."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        try:
            write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))
        except OSError as error:  # full disk, quota, permissions: one line, earlier checkpoints intact
            raise WriteError(
                f"cannot write checkpoint {path}: {error.strerror or error} (check the disk space and "
                "permissions); the checkpoints written before it are intact"
            ) from None


PARTIAL_CHECKPOINTS = ".*.ckpt.part"  # what a write killed half-way leaves (utils.images.write_atomic)


def prepare_checkpoint_folder(checkpoint_dir: Path, resuming: bool) -> None:
    """Never overwrite another run's checkpoints; remove what a killed checkpoint write left behind."""
    existing = sorted(p.name for p in checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
    if existing and not resuming:
        shown = ", ".join(existing[:3]) + (", …" if len(existing) > 3 else "")
        fail(f"--output_dir {checkpoint_dir.parent} already holds checkpoints ({shown}); pass "
             "--resume_from_ckpt last to continue that run, or choose a fresh --output_dir")
    partial = sorted(checkpoint_dir.glob(PARTIAL_CHECKPOINTS)) if checkpoint_dir.is_dir() else []
    for path in partial:
        path.unlink(missing_ok=True)
    if partial:
        print(f"note: removed {len(partial)} unfinished checkpoint file(s) left by an interrupted run in {checkpoint_dir}")


def resume_checkpoint(args, checkpoint_dir: Path) -> tuple[str | None, dict | None]:
    """The checkpoint to resume from and its contents, checked: readable, and of the same stage."""
    if args.resume_from_ckpt is None:
        return None, None
    path = checkpoint_dir / "last.ckpt" if args.resume_from_ckpt == "last" else Path(args.resume_from_ckpt)
    if not path.is_file():
        fail(f"--resume_from_ckpt: {path} does not exist")
    try:
        checkpoint = read_training_checkpoint(path, args.stage, args.conditional)
    except (WeightsReadError, MissingWeightsError, ValueError) as error:
        fail(f"--resume_from_ckpt: {error}")
    return str(path), checkpoint


def describe_arch(arch) -> str:
    return repr(arch) if isinstance(arch, str) else f"a JSON {arch.get('type', 'architecture')} config"


def check_resume(model: MMSERectifiedFlow, checkpoint: dict, path: str) -> None:
    """What a resumed run cannot change is refused with one line (the networks' architectures, the EMA
    switched on or off); the hyper-parameters it may change are listed, and applied from now on."""
    saved = checkpoint.get("hyper_parameters") or {}
    state = network_state(checkpoint.get("state_dict") or {})
    for prefix, option in (("model.", "arch"), ("mmse_model.", "mmse_model_arch")):
        networks = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        problem = state_dict_mismatch(networks, {k: v for k, v in state.items() if k.startswith(prefix)})
        if not problem:
            continue
        ours, theirs = model.hparams.get(option), saved.get(option)
        if theirs is not None and self_contained(theirs) != ours:
            fail(f"--resume_from_ckpt {path}: trained with --{option} {describe_arch(theirs)}, this run has "
                 f"{describe_arch(ours)}; a run resumes only with the same networks")
        fail(f"--resume_from_ckpt {path}: its networks do not fit this run's --{option} ({problem.split(';')[0]}); "
             "a run resumes only with the same networks")
    if (checkpoint.get("ema") is not None) != (model.ema is not None):
        wanted = "an --ema_decay >= 0" if checkpoint.get("ema") is not None else "--ema_decay -1"
        fail(f"--resume_from_ckpt {path}: the EMA cannot be switched on or off when resuming; resume with {wanted}")
    changes = []
    for key in RESUMABLE_CHANGES:
        old, new = saved.get(key), model.hparams.get(key)
        if key == "betas" and old is not None:
            old, new = tuple(float(b) for b in old), tuple(float(b) for b in new)
        if key in saved and old != new:
            changes.append(f"{key} {old} -> {new}")
    if changes:
        print(f"note: resuming with changed hyper-parameters, applied from step {checkpoint.get('global_step', 0)} "
              f"on: {', '.join(changes)}")


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_torch()
    try:  # the combination names a method (pmrf.method_for), before anything is written
        method_of(args.stage, args.conditional, args.mmse_model_ckpt_path, args.mmse_model_arch)
    except ValueError as error:
        fail(str(error))
    if args.seed is not None:
        L.seed_everything(args.seed, workers=True, verbose=False)
    output_dir = check_writable_folder(args.output_dir)
    logger_kind = choose_logger(args.logger)  # before any compute: --logger wandb that cannot log ends here
    checkpoint_dir = output_dir / "checkpoints"
    accelerator, devices = resolve_devices(args.accelerator, args.devices, args.num_gpus)
    processes = devices * args.num_nodes
    prepare_checkpoint_folder(checkpoint_dir, resuming=args.resume_from_ckpt is not None)
    ckpt_path, resumed = resume_checkpoint(args, checkpoint_dir)
    try:
        model = MMSERectifiedFlow(
            stage=args.stage, arch=args.arch, conditional=args.conditional,
            mmse_model_ckpt_path=args.mmse_model_ckpt_path, mmse_model_arch=args.mmse_model_arch,
            lr=args.lr, weight_decay=args.weight_decay, betas=tuple(args.betas),
            mmse_noise_std=args.source_noise_std, num_flow_steps=args.num_flow_steps, ema_decay=args.ema_decay,
            eps=args.eps, t_schedule=args.t_schedule,
            colorization=degradation_channels(args.degradation) == 1,
        )
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    if resumed is not None:
        check_resume(model, resumed, ckpt_path)
        del resumed  # Lightning reads the file again
    model.use_ema = args.use_ema
    set_up_networks(model, args.attention_backend, compiles(args.compile, accelerator, args.stage))
    train_loader, val_loader = make_loaders(args, processes)
    if val_loader is not None:
        # the reference's fid / inception_score, in every checkpoint
        model.attach_validation_metrics(args.offline, args.metrics_ckpt_dir)
    logger = make_logger(args, output_dir, logger_kind)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        strategy="ddp" if processes > 1 else "auto",
        precision=args.precision,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        check_val_every_n_epoch=args.check_val_every_n_epoch,
        logger=logger,
        log_every_n_steps=args.log_every_n_steps,
        default_root_dir=str(output_dir),
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ModelCheckpoint(dirpath=str(checkpoint_dir), save_last=True, enable_version_counter=False),
            LearningRateMonitor(logging_interval="step"),
            FiniteGuard(args.nan_policy),
        ],
    )
    try:
        trainer.fit(model, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    except (WriteError, NonFiniteTrainingError) as error:
        fail(str(error))
    print(f"checkpoints: {checkpoint_dir}")


if __name__ == "__main__":
    main()

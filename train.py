"""Train PMRF or one of its baselines (spec §6). Example: scripts/train/blind_face_restoration/train_pmrf.sh."""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from torch.utils.data import DataLoader

from data import ImageFolderDataset, make_transform
from degradations import DEGRADATION_NAMES, create_degradation
from lightning_models.flow import T_SCHEDULES
from lightning_models.mmse_rectified_flow import STAGES, MMSERectifiedFlow
from utils.cli import arch_argument, configure_torch, existing_folder, fail, resolve_devices, wandb_configured


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--precision", choices=["bf16-mixed", "32", "16-mixed"], default="bf16-mixed")
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
    p.add_argument("--source_noise_std", type=float, default=0.0, help="sigma_s, noise added to the source")
    p.add_argument("--num_flow_steps", type=int, default=50, help="Euler steps used in validation")
    p.add_argument("--num_gpus", type=int, default=4, help="GPUs to use when training on GPU (see --devices)")
    p.add_argument("--check_val_every_n_epoch", type=int, default=1)
    p.add_argument("--train_batch_size", type=int, default=256, help="global batch size (all devices)")
    p.add_argument("--val_batch_size", type=int, default=32, help="per device")
    p.add_argument("--num_workers", type=int, default=10, help="data-loading workers in total")
    p.add_argument("--img_size", type=int, default=512)
    p.add_argument("--max_epochs", type=int, default=1000)
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--ema_decay", type=float, default=0.9999, help="-1 disables the EMA")
    p.add_argument("--eps", type=float, default=0.0)
    p.add_argument("--t_schedule", choices=T_SCHEDULES, default="stratified_uniform")
    p.add_argument("--weight_decay", type=float, default=1e-2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.95), metavar=("BETA1", "BETA2"))
    p.add_argument("--wandb_project_name", default="PMRF")
    p.add_argument("--wandb_group", default=None)
    p.add_argument("--wandb_id", default=None)
    p.add_argument("--resume_from_ckpt", default=None, help="checkpoint path, or 'last' for OUTPUT_DIR's last.ckpt")
    p.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, mps, ...")
    p.add_argument("--devices", type=int, default=None, help="devices to use (default: --num_gpus on GPU, else 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--logger", choices=["wandb", "csv", "tensorboard"], default=None,
                   help="default: wandb when it is configured (API key, login or offline mode), else csv")
    p.add_argument("--output_dir", default="outputs", help="checkpoints and local logs go here")
    p.add_argument("--log_every_n_steps", type=int, default=50)
    return p


def make_logger(args, output_dir: Path):
    kind = args.logger or ("wandb" if wandb_configured() else "csv")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project=args.wandb_project_name, group=args.wandb_group, id=args.wandb_id,
                           resume="allow" if args.wandb_id else None, save_dir=str(output_dir))
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(output_dir), name="tensorboard")
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(output_dir), name="csv")


def make_loaders(args, devices: int):
    if args.train_batch_size % devices:
        fail(f"--train_batch_size {args.train_batch_size} is not divisible by the {devices} devices")
    workers = max(0, args.num_workers // devices)
    degradation = create_degradation(args.degradation)
    transform = make_transform(args.img_size)
    try:
        train_set = ImageFolderDataset(args.train_data_root, degradation, transform, args.source_samples_train_data_root)
        val_set = ImageFolderDataset(args.val_data_root, degradation, transform) if args.val_data_root else None
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    common = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    train = DataLoader(train_set, batch_size=args.train_batch_size // devices, shuffle=True, drop_last=False, **common)
    val = DataLoader(val_set, batch_size=args.val_batch_size, shuffle=False, **common) if val_set else None
    return train, val


def resume_path(args, checkpoint_dir: Path) -> str | None:
    if args.resume_from_ckpt is None:
        return None
    path = checkpoint_dir / "last.ckpt" if args.resume_from_ckpt == "last" else Path(args.resume_from_ckpt)
    if not path.is_file():
        fail(f"--resume_from_ckpt: {path} does not exist")
    return str(path)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_torch()
    if args.seed is not None:
        L.seed_everything(args.seed, workers=True)
    output_dir = Path(args.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    accelerator, devices = resolve_devices(args.accelerator, args.devices, args.num_gpus)
    try:
        model = MMSERectifiedFlow(
            stage=args.stage, arch=args.arch, conditional=args.conditional,
            mmse_model_ckpt_path=args.mmse_model_ckpt_path, mmse_model_arch=args.mmse_model_arch,
            lr=args.lr, weight_decay=args.weight_decay, betas=tuple(args.betas),
            mmse_noise_std=args.source_noise_std, num_flow_steps=args.num_flow_steps, ema_decay=args.ema_decay,
            eps=args.eps, t_schedule=args.t_schedule,
            colorization=args.degradation == "colorization_gaussian_noise_025",
        )
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    train_loader, val_loader = make_loaders(args, devices)
    logger = make_logger(args, output_dir)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        precision=args.precision,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        check_val_every_n_epoch=args.check_val_every_n_epoch,
        logger=logger,
        log_every_n_steps=args.log_every_n_steps,
        default_root_dir=str(output_dir),
        callbacks=[
            ModelCheckpoint(dirpath=str(checkpoint_dir), save_last=True, enable_version_counter=False),
            LearningRateMonitor(logging_interval="step"),
        ],
    )
    trainer.fit(model, train_loader, val_loader, ckpt_path=resume_path(args, checkpoint_dir), weights_only=True)
    print(f"checkpoints: {checkpoint_dir}")


if __name__ == "__main__":
    main()

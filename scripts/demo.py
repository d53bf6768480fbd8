"""`make demo`: the whole PMRF pipeline on a tiny synthetic face data set, on CPU, offline, in about
three minutes after the install.

1. draws cartoon faces (train / held-out test), 48×48;
2. trains a tiny posterior-mean (MMSE) SwinIR with train.py --stage mmse;
3. trains a tiny PMRF flow (HDiT) from that MMSE model with train.py --stage flow;
4. degrades the held-out faces (Gaussian noise, σ = 0.35) and restores them with inference.py;
5. writes side-by-side images (clean | degraded | MMSE | PMRF) and metrics.json.

The networks are far too small and trained far too briefly to be good; the point is that every piece
runs. For real results use the official checkpoint (see README).

Sized for a 2-core machine (about three minutes there): 48×48 faces, SwinIR windows of 4 tokens so that the
12×12 token grid needs no padding (configs/demo_swinir.json), a 5×5 neighbourhood in the HDiT
(configs/demo_hdit.json: the CPU neighbourhood-attention backend's cost grows with the window area),
150 + 200 training steps, one data-loading worker, and OpenMP threads that sleep rather than spin while
they wait (OMP_WAIT_POLICY=PASSIVE, unless set: spinning threads slow training badly on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from degradations import create_degradation  # noqa: E402
from utils.images import list_images, read_rgb, save_rgb, tensor_to_uint8  # noqa: E402
from utils.synthetic_faces import make_face_folder  # noqa: E402

DEGRADATION = "gaussian_noise_035"
# the programs this demo starts: OpenMP threads sleep while waiting instead of spinning (see above)
ENV = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}


def run(step: str, command: list[str]) -> None:
    print(f"\n=== {step}\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env=ENV)
    print(f"=== {step}: done in {time.perf_counter() - start:.0f} s", flush=True)


def train_command(args, stage: str, arch: str, out: Path, steps: int, extra: list[str]) -> list[str]:
    return [
        sys.executable, "train.py", "--stage", stage, "--arch", arch, "--degradation", DEGRADATION,
        "--train_data_root", str(args.output_dir / "data" / "train"), "--img_size", str(args.img_size),
        "--train_batch_size", str(args.batch_size), "--num_workers", str(args.num_workers), "--max_steps", str(steps),
        "--precision", "32", "--accelerator", "cpu", "--ema_decay", "0.99", "--lr", "1e-3",
        "--logger", "csv", "--seed", "0", "--output_dir", str(out), "--log_every_n_steps", "20", *extra,
    ]


def degrade_folder(clean: Path, degraded: Path, seed: int) -> None:
    degrade = create_degradation(DEGRADATION, generator=torch.Generator().manual_seed(seed))
    for path in list_images(clean):
        x = torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1).float() / 255
        y, _ = degrade(x)
        save_rgb(tensor_to_uint8(y), degraded / path.name)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def compare(args, clean: Path, degraded: Path, restored: Path) -> dict:
    columns = {"degraded": degraded, "mmse": restored / "restored_images_posterior_mean", "pmrf": restored / "restored_images"}
    scores: dict[str, list[float]] = {name: [] for name in columns}
    for path in list_images(clean):
        gt = read_rgb(path)
        row = [gt]
        for name, folder in columns.items():
            image = read_rgb(folder / path.name)
            scores[name].append(psnr(image, gt))
            row.append(image)
        gap = np.full((gt.shape[0], 4, 3), 255, np.uint8)
        strip = np.concatenate([part for image in row for part in (image, gap)][:-1], axis=1)
        save_rgb(strip, args.output_dir / "side_by_side" / path.name)
    return {f"psnr_{name}": float(np.mean(values)) for name, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=ROOT / "demo_output")
    parser.add_argument("--num_train", type=int, default=512)
    parser.add_argument("--num_test", type=int, default=8)
    parser.add_argument("--img_size", type=int, default=48, help="a multiple of 16 (SwinIR: sf 4 × window 4)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--mmse_steps", type=int, default=150)
    parser.add_argument("--pmrf_steps", type=int, default=200)
    parser.add_argument("--num_flow_steps", type=int, default=25)
    parser.add_argument("--num_workers", type=int, default=1, help="data-loading workers of each training run")
    args = parser.parse_args()
    args.output_dir = args.output_dir.resolve()
    out = args.output_dir
    started = time.perf_counter()

    print("=== drawing synthetic faces", flush=True)
    make_face_folder(out / "data" / "train", args.num_train, args.img_size, seed=0)
    make_face_folder(out / "data" / "test", args.num_test, args.img_size, seed=1)

    for run_folder in (out / "mmse", out / "pmrf"):  # a new demo trains afresh (train.py keeps old runs)
        shutil.rmtree(run_folder, ignore_errors=True)
    run("training the posterior-mean (MMSE) model",
        train_command(args, "mmse", "configs/demo_swinir.json", out / "mmse", args.mmse_steps, []))
    mmse_ckpt = out / "mmse" / "checkpoints" / "last.ckpt"
    run("training PMRF", train_command(args, "flow", "configs/demo_hdit.json", out / "pmrf", args.pmrf_steps,
                                       ["--mmse_model_ckpt_path", str(mmse_ckpt), "--source_noise_std", "0.1"]))

    degrade_folder(out / "data" / "test", out / "degraded", seed=2)
    run("restoring the held-out faces", [
        sys.executable, "inference.py", "--ckpt_path", str(out / "pmrf" / "checkpoints" / "last.ckpt"),
        "--lq_data_path", str(out / "degraded"), "--output_dir", str(out / "restored"),
        "--num_flow_steps", str(args.num_flow_steps), "--device", "cpu", "--seed", "0", "--batch_size", "8",
    ])

    metrics = compare(args, out / "data" / "test", out / "degraded", out / "restored")
    metrics.update(degradation=DEGRADATION, num_flow_steps=args.num_flow_steps, images=args.num_test,
                   seconds=round(time.perf_counter() - started, 1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print("\n| images vs clean | PSNR (dB) |\n|---|---|")
    for name in ("degraded", "mmse", "pmrf"):
        print(f"| {name} | {metrics[f'psnr_{name}']:.2f} |")
    print(f"\nside-by-side images (clean | degraded | MMSE | PMRF): {out / 'side_by_side'}")
    print(f"demo results: {out}")


if __name__ == "__main__":
    main()

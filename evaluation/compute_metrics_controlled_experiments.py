r"""Metrics of the controlled experiments (256x256 CelebA-Test), as in the PMRF paper.

    cd evaluation && python compute_metrics_controlled_experiments.py --parent_ffhq_256_path P \
        --rec_path R --gt_path G

PSNR, SSIM and LPIPS (piq, data range 1), MSE (0-255 scale), and FID/KID/IS/precision-recall
against P/ffhq256. Results are printed as a table and saved as JSON: the reference's keys with the
reference's values (its inception_score_* is FFHQ's and its precision/recall are swapped, because the
authors gave FFHQ to torch-fidelity first), plus inception_score_restored_* and
precision/recall_restored in the usual sense. Exit status 3 means some metric was skipped (missing,
corrupt or unsafe weights) or some images could not be read; 1 that a metric failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == _REPO_ROOT / "evaluation":
    sys.path.pop(0)  # run as a script: import this folder's modules as `evaluation.*` only
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from evaluation.cli import (  # noqa: E402
    MetricRunner,
    add_common_arguments,
    run_fidelity,
    run_program,
)

CONTROLLED_METRICS = ("psnr", "ssim", "mse", "lpips", "fid", "kid", "isc", "prc")
NEEDS_GT = ("psnr", "ssim", "mse", "lpips")
FIDELITY = ("fid", "kid", "isc", "prc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parent_ffhq_256_path",
        type=Path,
        default=None,
        help="parent of the 'ffhq256' folder (FFHQ at 256x256), needed for FID/KID/IS/PRC",
    )
    parser.add_argument("--rec_path", type=Path, required=True, help="folder of restored images")
    parser.add_argument(
        "--gt_path", type=Path, default=None, help="folder of ground-truth images with the same file names"
    )
    add_common_arguments(parser, CONTROLLED_METRICS)
    return parser


def unmet_needs(args: argparse.Namespace) -> dict[str, str]:
    unmet = {}
    if args.gt_path is None:
        unmet.update(dict.fromkeys(NEEDS_GT, "--gt_path"))
    if args.parent_ffhq_256_path is None:
        unmet.update(dict.fromkeys(FIDELITY, "--parent_ffhq_256_path"))
    return unmet


def check_folders(args: argparse.Namespace, metrics: list[str]) -> None:
    from evaluation.inputs import image_files, paired_files

    image_files(args.rec_path, "--rec_path")
    if any(name in NEEDS_GT for name in metrics):
        paired_files(args.rec_path, args.gt_path, "--gt_path")
    if any(name in FIDELITY for name in metrics):
        image_files(args.parent_ffhq_256_path / "ffhq256", "--parent_ffhq_256_path/ffhq256")


def run_metrics(args: argparse.Namespace, metrics: list[str], runner: MetricRunner) -> None:
    from evaluation.piq_metrics import calculate_piq_distortion, calculate_piq_lpips

    loader = {"device": args.device, "batch_size": args.batch_size, "num_workers": args.num_workers}
    rec, gt, ckpt = args.rec_path, args.gt_path, args.metrics_ckpt_dir
    chosen = lambda names: [name for name in names if name in metrics]  # noqa: E731

    runner.run(chosen(["psnr", "ssim", "mse"]), lambda: calculate_piq_distortion(rec, gt, **loader))
    runner.run(
        chosen(["lpips"]),
        lambda: {"lpips": calculate_piq_lpips(rec, gt, ckpt_dir=ckpt, offline=args.offline, **loader)},
    )
    if chosen(FIDELITY):
        run_fidelity(args, args.parent_ffhq_256_path / "ffhq256", chosen(FIDELITY), runner)


def main(argv: list[str] | None = None) -> int:
    return run_program(
        argv,
        program="compute_metrics_controlled_experiments.py",
        parser=build_parser(),
        metric_names=CONTROLLED_METRICS,
        unmet_needs=unmet_needs,
        check_folders=check_folders,
        run_metrics=run_metrics,
        json_suffix="metrics_controlled",
    )


if __name__ == "__main__":
    sys.exit(main())

r"""Metrics of blind face restoration (CelebA-Test and real-world sets), as in the PMRF paper.

    cd evaluation && python compute_metrics_blind.py --parent_ffhq_512_path P --rec_path R \
        [--gt_path G] [--mmse_rec_path M]

Always NIQE, and FID/KID/IS/precision-recall against P/ffhq512; with G also PSNR, SSIM, MSE, LPIPS,
identity degradation (Deg) and landmark distance (LMD); with M the IndRMSE inputs. Results are
printed as a table and saved as JSON: the reference's keys with the reference's values (its
inception_score_* is FFHQ's and its precision/recall are swapped, because the authors gave FFHQ to
torch-fidelity first), plus inception_score_restored_* and precision/recall_restored in the usual
sense. Exit status 3 means some metric was skipped (missing, corrupt or unsafe weights, see
evaluation/metrics_ckpt/README.md) or some images could not be read; 1 that a metric failed.
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
from evaluation.landmarks import REFINEMENTS  # noqa: E402

BLIND_METRICS = ("niqe", "psnr", "ssim", "mse", "lpips", "deg", "lmd", "ind", "fid", "kid", "isc", "prc")
NEEDS_GT = ("psnr", "ssim", "mse", "lpips", "deg", "lmd")
FIDELITY = ("fid", "kid", "isc", "prc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parent_ffhq_512_path",
        type=Path,
        default=None,
        help="parent of the 'ffhq512' folder (FFHQ at 512x512), needed for FID/KID/IS/PRC",
    )
    parser.add_argument("--rec_path", type=Path, required=True, help="folder of restored images")
    parser.add_argument(
        "--gt_path", type=Path, default=None, help="folder of ground-truth images with the same file names"
    )
    parser.add_argument(
        "--mmse_rec_path",
        type=Path,
        default=None,
        help="folder of posterior-mean (MMSE) restorations with the same file names, for IndRMSE",
    )
    parser.add_argument(
        "--lmd_refinement",
        choices=REFINEMENTS,
        default="reference",
        help="how LMD refines each heat-map arg-max at the map's border: 'reference' (default) as the "
        "authors' code, where one landmark on the top or bottom row changes every landmark's vertical "
        "refinement; 'per_landmark' uses each landmark's own neighbours only",
    )
    add_common_arguments(parser, BLIND_METRICS)
    return parser


def unmet_needs(args: argparse.Namespace) -> dict[str, str]:
    unmet = {}
    if args.gt_path is None:
        unmet.update(dict.fromkeys(NEEDS_GT, "--gt_path"))
    if args.mmse_rec_path is None:
        unmet["ind"] = "--mmse_rec_path"
    if args.parent_ffhq_512_path is None:
        unmet.update(dict.fromkeys(FIDELITY, "--parent_ffhq_512_path"))
    return unmet


def check_folders(args: argparse.Namespace, metrics: list[str]) -> None:
    """Fail early on bad folders, before any metric runs."""
    from evaluation.inputs import image_files, paired_files

    image_files(args.rec_path, "--rec_path")
    if any(name in NEEDS_GT for name in metrics):
        paired_files(args.rec_path, args.gt_path, "--gt_path")
    if "ind" in metrics:
        paired_files(args.rec_path, args.mmse_rec_path, "--mmse_rec_path")
    if any(name in FIDELITY for name in metrics):
        image_files(args.parent_ffhq_512_path / "ffhq512", "--parent_ffhq_512_path/ffhq512")


def run_metrics(args: argparse.Namespace, metrics: list[str], runner: MetricRunner) -> None:
    from evaluation.distortion import calculate_psnr_ssim_mse
    from evaluation.identity import calculate_identity_distance
    from evaluation.ind_rmse import calculate_ind_rmse
    from evaluation.landmarks import calculate_landmark_distance
    from evaluation.lpips_vgg import calculate_lpips
    from evaluation.niqe import calculate_niqe

    loader = {"device": args.device, "batch_size": args.batch_size, "num_workers": args.num_workers}
    rec, gt, ckpt = args.rec_path, args.gt_path, args.metrics_ckpt_dir
    chosen = lambda names: [name for name in names if name in metrics]  # noqa: E731

    runner.run(chosen(["niqe"]), lambda: {"niqe": calculate_niqe(rec, num_workers=args.num_workers)})
    runner.run(chosen(["psnr", "ssim", "mse"]), lambda: calculate_psnr_ssim_mse(rec, gt, **loader))
    runner.run(
        chosen(["lpips"]),
        lambda: {"lpips": calculate_lpips(rec, gt, ckpt_dir=ckpt, offline=args.offline, **loader)},
    )
    runner.run(chosen(["deg"]), lambda: calculate_identity_distance(rec, gt, ckpt_dir=ckpt, **loader))
    runner.run(
        chosen(["lmd"]),
        lambda: {
            "landmark_distance": calculate_landmark_distance(
                rec, gt, ckpt_dir=ckpt, refinement=args.lmd_refinement, **loader
            )
        },
    )
    runner.run(chosen(["ind"]), lambda: calculate_ind_rmse(rec, args.mmse_rec_path, **loader))
    if chosen(FIDELITY):
        run_fidelity(args, args.parent_ffhq_512_path / "ffhq512", chosen(FIDELITY), runner)


def main(argv: list[str] | None = None) -> int:
    return run_program(
        argv,
        program="compute_metrics_blind.py",
        parser=build_parser(),
        metric_names=BLIND_METRICS,
        unmet_needs=unmet_needs,
        check_folders=check_folders,
        run_metrics=run_metrics,
        json_suffix="metrics_blind",
    )


if __name__ == "__main__":
    sys.exit(main())

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

How it is run: as the module ``python -m evaluation.compute_metrics_blind`` from the repository root.
Started as a file (``python evaluation/compute_metrics_blind.py``, or from the evaluation folder as
above), it hands over to that module with the repository on PYTHONPATH (`evaluation.run_as_module`);
it never edits ``sys.path``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # started as a file: run as the module (see above)
    from run_as_module import run_as_module  # this program's folder, first on a script's path

    run_as_module(__file__)

from evaluation import cli
from evaluation.landmarks import REFINEMENTS

BLIND_METRICS = ("niqe", "psnr", "ssim", "mse", "lpips", "deg", "lmd", "ind", "fid", "kid", "isc", "prc")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.program_parser(__doc__, 512)
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
    cli.add_common_arguments(parser, BLIND_METRICS)
    return parser


def metric_groups(
    inputs: cli.Inputs, settings: cli.Settings, lmd_refinement: str = "reference"
) -> list[cli.MetricGroup]:
    from evaluation.distortion import calculate_psnr_ssim_mse
    from evaluation.identity import calculate_identity_distance
    from evaluation.ind_rmse import calculate_ind_rmse
    from evaluation.landmarks import calculate_landmark_distance
    from evaluation.lpips_vgg import calculate_lpips
    from evaluation.niqe import calculate_niqe

    rec, gt, loading, weights = inputs.rec, inputs.gt, settings.loading, settings.weights
    return [
        (("niqe",), lambda _: {"niqe": calculate_niqe(rec, num_workers=settings.num_workers)}),
        (("psnr", "ssim", "mse"), lambda _: calculate_psnr_ssim_mse(rec, gt, **loading)),
        (("lpips",), lambda _: {"lpips": calculate_lpips(rec, gt, **weights, **loading)}),
        (("deg",), lambda _: calculate_identity_distance(rec, gt, **weights, **loading)),
        (
            ("lmd",),
            lambda _: {
                "landmark_distance": calculate_landmark_distance(
                    rec, gt, refinement=lmd_refinement, **weights, **loading
                )
            },
        ),
        (("ind",), lambda _: calculate_ind_rmse(rec, inputs.mmse, **loading)),
        cli.fidelity_group(inputs, settings),
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inputs = cli.Inputs(
        args.rec_path, args.gt_path, args.mmse_rec_path, ffhq_parent=args.parent_ffhq_512_path, ffhq_size=512
    )
    groups = functools.partial(metric_groups, lmd_refinement=args.lmd_refinement)
    return cli.run_program(
        "compute_metrics_blind.py", BLIND_METRICS, args.metrics, inputs, cli.Settings.from_args(args), groups,
        "metrics_blind",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

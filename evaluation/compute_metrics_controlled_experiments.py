r"""Metrics of the controlled experiments (256x256 CelebA-Test), as in the PMRF paper.

    cd evaluation && python compute_metrics_controlled_experiments.py --parent_ffhq_256_path P \
        --rec_path R --gt_path G

PSNR, SSIM and LPIPS (piq, data range 1), MSE (0-255 scale), and FID/KID/IS/precision-recall
against P/ffhq256. Results are printed as a table and saved as JSON: the reference's keys with the
reference's values (its inception_score_* is FFHQ's and its precision/recall are swapped, because the
authors gave FFHQ to torch-fidelity first), plus inception_score_restored_* and
precision/recall_restored in the usual sense. Exit status 3 means some metric was skipped (missing,
corrupt or unsafe weights) or some images could not be read; 1 that a metric failed.

How it is run: as the module ``python -m evaluation.compute_metrics_controlled_experiments`` from the
repository root. Started as a file (``python evaluation/compute_metrics_controlled_experiments.py``,
or from the evaluation folder as above), it hands over to that module with the repository on
PYTHONPATH (`evaluation.run_as_module`); it never edits ``sys.path``.
"""

from __future__ import annotations

import argparse
import sys

if __name__ == "__main__" and not __package__:  # started as a file: run as the module (see above)
    from run_as_module import run_as_module  # this program's folder, first on a script's path

    run_as_module(__file__)

from evaluation import cli

CONTROLLED_METRICS = ("psnr", "ssim", "mse", "lpips", "fid", "kid", "isc", "prc")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.program_parser(__doc__, 256)
    cli.add_common_arguments(parser, CONTROLLED_METRICS)
    return parser


def metric_groups(inputs: cli.Inputs, settings: cli.Settings) -> list[cli.MetricGroup]:
    from evaluation.piq_metrics import calculate_piq_distortion, calculate_piq_lpips

    rec, gt, loading = inputs.rec, inputs.gt, settings.loading
    return [
        (("psnr", "ssim", "mse"), lambda _: calculate_piq_distortion(rec, gt, **loading)),
        (("lpips",), lambda _: {"lpips": calculate_piq_lpips(rec, gt, **settings.weights, **loading)}),
        cli.fidelity_group(inputs, settings),
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inputs = cli.Inputs(args.rec_path, args.gt_path, ffhq_parent=args.parent_ffhq_256_path, ffhq_size=256)
    return cli.run_program(
        "compute_metrics_controlled_experiments.py", CONTROLLED_METRICS, args.metrics, inputs,
        cli.Settings.from_args(args), metric_groups, "metrics_controlled",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

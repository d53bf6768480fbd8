"""What the two evaluation programs share: options, metric selection, skipping, the final report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from evaluation.report import format_table, save_json
from utils.cli import resolve_device
from evaluation.weights import DEFAULT_CKPT_DIR, MetricUnavailable

EXIT_SKIPPED = 3

# Result keys each metric name produces, in the order the reference scripts report them.
RESULT_KEYS = {
    "niqe": ("niqe",),
    "lmd": ("landmark_distance",),
    "deg": ("arcface_cos_dist", "identity_count"),
    "lpips": ("lpips",),
    "mse": ("mse",),
    "ssim": ("ssim",),
    "psnr": ("psnr",),
    "ind": ("ind_psnr", "ind_mse"),
    "isc": ("inception_score_mean", "inception_score_std"),
    "fid": ("frechet_inception_distance",),
    "kid": ("kernel_inception_distance_mean", "kernel_inception_distance_std"),
    "prc": ("precision", "recall", "f_score"),
}


def add_common_arguments(parser: argparse.ArgumentParser, metric_names: Sequence[str]) -> None:
    parser.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated subset of {','.join(metric_names)} (default: all that the given "
        "folders allow)",
    )
    parser.add_argument(
        "--metrics_ckpt_dir",
        type=Path,
        default=DEFAULT_CKPT_DIR,
        help="folder with the metric networks' weights (default: evaluation/metrics_ckpt)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--batch_size", type=int, default=None, help="images per batch (default: 64 on GPU, 16 on CPU)"
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="image-loading processes (0: load in the main process)",
    )
    parser.add_argument(
        "--output_json",
        type=Path,
        default=None,
        help="where to save the results (default: next to --rec_path)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never download Inception/VGG/LPIPS weights; metrics missing them are skipped",
    )
    parser.add_argument(
        "--fidelity_cache_dir",
        type=Path,
        default=None,
        help="torch-fidelity's feature cache (default: $TORCH_HOME/fidelity_cache)",
    )
    parser.add_argument(
        "--fidelity_ffhq_first",
        action="store_true",
        help="pass FFHQ as torch-fidelity's first input like the authors' script (then the "
        "inception score is FFHQ's and precision/recall are swapped); only to reproduce "
        "published numbers",
    )


def parse_metric_list(text: str | None, allowed: Sequence[str]) -> list[str] | None:
    """Metric names from 'a,b,c' in the canonical order; None when not given (= all)."""
    if text is None:
        return None
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(
            f"--metrics: unknown {', '.join(unknown) or '(empty list)'}; choose from {','.join(allowed)}"
        )
    return [name for name in allowed if name in names]


def select_metrics(
    requested: list[str] | None, allowed: Sequence[str], unmet: dict[str, str]
) -> tuple[list[str], list[str]]:
    """Metrics to run and notes about left-out ones.

    `unmet` maps a metric to the missing option it needs. Asked-for metrics with unmet needs are an
    error; when running the default set they are left out with a note.
    """
    if requested is not None:
        impossible = [f"{name} needs {unmet[name]}" for name in requested if name in unmet]
        if impossible:
            raise ValueError("; ".join(impossible))
        return requested, []
    notes = {}
    for name in allowed:
        if name in unmet:
            notes.setdefault(unmet[name], []).append(name)
    return [name for name in allowed if name not in unmet], [
        f"not computed: {', '.join(names)} (no {option})" for option, names in notes.items()
    ]


def default_batch_size(device: torch.device, batch_size: int | None) -> int:
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError("--batch_size must be at least 1")
        return batch_size
    return 64 if device.type == "cuda" else 16


class MetricRunner:
    """Runs metric groups, collecting results and turning `MetricUnavailable` into one-line skips."""

    def __init__(self) -> None:
        self.results: dict[str, object] = {}
        self.skipped: dict[str, str] = {}

    def run(self, names: Iterable[str], compute: Callable[[], dict[str, object]]) -> None:
        names = list(names)
        if not names:
            return
        try:
            values = compute()
        except MetricUnavailable as reason:
            for name in names:
                self.skipped[name] = str(reason)
            print(f"metric {', '.join(names)} skipped: {reason}", file=sys.stderr, flush=True)
            return
        for name in names:
            for key in RESULT_KEYS[name]:
                if key in values:
                    self.results[key] = values[key]

    def ordered_results(self) -> dict[str, object]:
        order = [key for keys in RESULT_KEYS.values() for key in keys]
        return {key: self.results[key] for key in order if key in self.results}


def finish(runner: MetricRunner, output_json: Path) -> int:
    """Print the table, save the JSON and return the exit status (3 when a metric was skipped)."""
    results = runner.ordered_results()
    print(format_table(results))
    path = save_json(results, output_json)
    print(f"results saved to {path}")
    if runner.skipped:
        print(f"skipped: {', '.join(runner.skipped)} (reasons above)", file=sys.stderr)
        return EXIT_SKIPPED
    return 0


def one_line(error: BaseException) -> str:
    """The useful line of an error, also when a DataLoader worker wrapped it with a traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text


def run_program(
    argv: list[str] | None,
    *,
    program: str,
    parser: argparse.ArgumentParser,
    metric_names: Sequence[str],
    unmet_needs,
    check_folders,
    run_metrics,
    json_suffix: str,
) -> int:
    """The shared main() of the evaluation programs: parse, choose metrics, check folders, run, report."""
    args = parser.parse_args(argv)
    try:
        requested = parse_metric_list(args.metrics, metric_names)
        metrics, notes = select_metrics(requested, metric_names, unmet_needs(args))
        args.device = resolve_device(args.device, prefer_mps=False)
        args.batch_size = default_batch_size(args.device, args.batch_size)
        check_folders(args, metrics)
        for note in notes:
            print(note, file=sys.stderr)
        runner = MetricRunner()
        run_metrics(args, metrics, runner)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"{program}: error: {one_line(error)}") from None
    rec = args.rec_path.resolve()
    return finish(runner, args.output_json or rec.parent / f"{rec.name}_{json_suffix}.json")


def run_fidelity(args: argparse.Namespace, reference: Path, names: list[str], runner: MetricRunner) -> None:
    """FID / KID / IS / precision-recall of args.rec_path against the `reference` image folder."""
    from evaluation.fidelity import calculate_fidelity_metrics

    runner.run(
        names,
        lambda: calculate_fidelity_metrics(
            args.rec_path,
            reference,
            metrics=names,
            ckpt_dir=args.metrics_ckpt_dir,
            offline=args.offline,
            cache_root=args.fidelity_cache_dir,
            reference_first=args.fidelity_ffhq_first,
            device=args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        ),
    )

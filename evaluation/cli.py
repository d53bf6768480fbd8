"""What the two evaluation programs share: options, the metric tables, selection, skipping, the report.

A program parses its command line once into two frozen records, `Inputs` (the folders) and `Settings`
(everything else), and hands them with its metric groups to `run_program`; nothing past a program's
`main` sees the argparse Namespace.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from evaluation.fidelity import FIDELITY_METRICS
from evaluation.inputs import forget_unreadable, image_files, paired_files, unreadable_images
from evaluation.report import format_table, save_json
from evaluation.weights import SKIP_ERRORS
from utils.cli import non_negative_int, positive_int, resolve_device

EXIT_FAILED = 1  # a metric failed unexpectedly (the others are still saved)
EXIT_SKIPPED = 3  # a metric was skipped (missing or unusable weights, ...) or images were unreadable

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
    "isc": (
        "inception_score_mean",
        "inception_score_std",
        "inception_score_restored_mean",
        "inception_score_restored_std",
    ),
    "fid": ("frechet_inception_distance",),
    "kid": ("kernel_inception_distance_mean", "kernel_inception_distance_std"),
    "prc": ("precision", "recall", "f_score", "precision_restored", "recall_restored"),
}

# The metric tables: what each metric compares the restored images with (the option that names it).
NEEDS_GT = ("psnr", "ssim", "mse", "lpips", "deg", "lmd")  # --gt_path
NEEDS_MMSE = ("ind",)  # --mmse_rec_path
FIDELITY = FIDELITY_METRICS  # the FFHQ folder (--parent_ffhq_512_path or --parent_ffhq_256_path)

# What the printed table says next to the keys whose meaning is not what their name suggests.
KEY_NOTES = {
    "inception_score_mean": "of FFHQ (reference key: FFHQ was torch-fidelity's input1)",
    "inception_score_std": "of FFHQ (reference key)",
    "inception_score_restored_mean": "of the restored images",
    "inception_score_restored_std": "of the restored images",
    "precision": "share of FFHQ inside the restored manifold (reference key, swapped)",
    "recall": "share of restored inside the FFHQ manifold (reference key, swapped)",
    "precision_restored": "share of restored inside the FFHQ manifold (usual precision)",
    "recall_restored": "share of FFHQ inside the restored manifold (usual recall)",
}


def program_parser(description: str, ffhq_size: int) -> argparse.ArgumentParser:
    """A program's parser with the folders both programs take: FFHQ at `ffhq_size`, restored, ground truth."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        ffhq_option(ffhq_size),
        type=Path,
        default=None,
        help=f"parent of the 'ffhq{ffhq_size}' folder (FFHQ at {ffhq_size}x{ffhq_size}), needed for "
        "FID/KID/IS/PRC",
    )
    parser.add_argument("--rec_path", type=Path, required=True, help="folder of restored images")
    parser.add_argument(
        "--gt_path", type=Path, default=None, help="folder of ground-truth images with the same file names"
    )
    return parser


def ffhq_option(ffhq_size: int) -> str:
    return f"--parent_ffhq_{ffhq_size}_path"


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
        default=None,
        help="folder with the metric networks' weights, looked in first (then evaluation/metrics_ckpt and "
        "torch's hub cache; see evaluation/metrics_ckpt/README.md)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=None,
        help="images per batch (default: 64 on GPU, 16 on CPU)",
    )
    parser.add_argument(
        "--num_workers",
        type=non_negative_int,
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
        help="never download metric weights (Inception, VGG16, LPIPS head, AWing FAN); metrics missing "
        "them are skipped",
    )
    parser.add_argument(
        "--fidelity_cache_dir",
        type=Path,
        default=None,
        help="where the FFHQ Inception features are cached, as safetensors (default: "
        "$TORCH_HOME/fidelity_cache)",
    )
    parser.add_argument(
        "--no_fidelity_cache", action="store_true", help="neither read nor write the FFHQ feature cache"
    )
    parser.add_argument(
        "--fidelity_ffhq_first",
        action="store_true",
        help="no effect, kept for old command lines: the reference's keys always hold the reference's "
        "values (FFHQ first), and the *_restored keys the restored images' IS and precision/recall",
    )


@dataclass(frozen=True)
class Inputs:
    """The folders of a run: the restored images and what some metrics compare them with."""

    rec: Path
    gt: Path | None = None
    mmse: Path | None = None
    ffhq_parent: Path | None = None  # P of P/ffhq512 (or P/ffhq256), FFHQ for FID/KID/IS/PRC
    ffhq_size: int = 512

    @property
    def ffhq(self) -> Path | None:
        return self.ffhq_parent / f"ffhq{self.ffhq_size}" if self.ffhq_parent is not None else None

    def unmet_needs(self) -> dict[str, str]:
        """Metric name -> the option it needs that was not given."""
        unmet = {}
        for names, folder, option in (
            (NEEDS_GT, self.gt, "--gt_path"),
            (NEEDS_MMSE, self.mmse, "--mmse_rec_path"),
            (FIDELITY, self.ffhq_parent, ffhq_option(self.ffhq_size)),
        ):
            if folder is None:
                unmet.update(dict.fromkeys(names, option))
        return unmet

    def check(self, metrics: Iterable[str]) -> None:
        """Fail early on bad folders (no images, names or sizes that differ), before any metric runs."""
        metrics = set(metrics)
        image_files(self.rec, "--rec_path")
        if metrics & set(NEEDS_GT):
            paired_files(self.rec, self.gt, "--gt_path")
        if metrics & set(NEEDS_MMSE):
            paired_files(self.rec, self.mmse, "--mmse_rec_path")
        if metrics & set(FIDELITY):
            image_files(self.ffhq, f"{ffhq_option(self.ffhq_size)}/{self.ffhq.name}")


@dataclass(frozen=True)
class Settings:
    """The options both programs share (`add_common_arguments`); `resolved()` fills in the defaults
    that depend on the machine (device, batch size)."""

    device: torch.device | str | None = None
    batch_size: int | None = None
    num_workers: int = 0
    ckpt_dir: Path | None = None
    offline: bool = False
    fidelity_cache_dir: Path | None = None
    use_fidelity_cache: bool = True
    output_json: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            device=args.device,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            ckpt_dir=args.metrics_ckpt_dir,
            offline=args.offline,
            fidelity_cache_dir=args.fidelity_cache_dir,
            use_fidelity_cache=not args.no_fidelity_cache,
            output_json=args.output_json,
        )

    def resolved(self) -> Settings:
        device = resolve_device(self.device, prefer_mps=False)
        return replace(self, device=device, batch_size=default_batch_size(device, self.batch_size))

    @property
    def loading(self) -> dict[str, object]:
        """The image-loading keywords every metric function takes."""
        return {"device": self.device, "batch_size": self.batch_size, "num_workers": self.num_workers}

    @property
    def weights(self) -> dict[str, object]:
        """Where metric functions look for their networks' weights, and whether they may download them."""
        return {"ckpt_dir": self.ckpt_dir, "offline": self.offline}


# A group of metrics computed together: their names and a function of the chosen ones -> results.
MetricGroup = tuple[Sequence[str], Callable[[list[str]], dict[str, object]]]


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
        return batch_size
    return 64 if device.type == "cuda" else 16


class MetricRunner:
    """Runs metric groups and collects their results; one group's trouble never loses the others.

    Missing, corrupt or unsafe weights and other `SKIP_ERRORS` skip the group with one line; any other
    error is reported with its traceback as a failure, and the run goes on.
    """

    def __init__(self) -> None:
        self.results: dict[str, object] = {}
        self.skipped: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def run(self, names: Iterable[str], compute: Callable[[], dict[str, object]]) -> None:
        names = list(names)
        if not names:
            return
        try:
            values = compute()
        except SKIP_ERRORS as reason:
            message = " ".join(str(reason).split())
            for name in names:
                self.skipped[name] = message
            print(f"metric {', '.join(names)} skipped: {message}", file=sys.stderr, flush=True)
            return
        except Exception as error:
            traceback.print_exc()
            for name in names:
                self.failed[name] = f"{error.__class__.__name__}: {error}"
            print(f"metric {', '.join(names)} failed: {one_line(error)}", file=sys.stderr, flush=True)
            return
        for name in names:
            for key in RESULT_KEYS[name]:
                if key in values:
                    self.results[key] = values[key]

    def ordered_results(self) -> dict[str, object]:
        order = [key for keys in RESULT_KEYS.values() for key in keys]
        return {key: self.results[key] for key in order if key in self.results}


def finish(runner: MetricRunner, output_json: Path) -> int:
    """Print the table, save the JSON and return the exit status.

    1 when a metric failed, else 3 when a metric was skipped or images could not be read, else 0.
    Unreadable images are listed on stderr and, under "unreadable_images", in the JSON.
    """
    results = runner.ordered_results()
    print(format_table(results, KEY_NOTES))
    unreadable = unreadable_images()
    if unreadable:
        results["unreadable_images"] = sorted(unreadable)
    path = save_json(results, output_json)
    print(f"results saved to {path}")
    if unreadable:
        print(f"{len(unreadable)} unreadable image(s) left out:", file=sys.stderr)
        for name in sorted(unreadable):
            print(f"  {name}", file=sys.stderr)
    if runner.skipped:
        print(f"skipped: {', '.join(runner.skipped)} (reasons above)", file=sys.stderr)
    if runner.failed:
        print(f"failed: {', '.join(runner.failed)} (tracebacks above)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_SKIPPED if runner.skipped or unreadable else 0


def one_line(error: BaseException) -> str:
    """The useful line of an error, also when a DataLoader worker wrapped it with a traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text


def run_program(
    program: str,
    metric_names: Sequence[str],
    requested: str | None,
    inputs: Inputs,
    settings: Settings,
    metric_groups: Callable[[Inputs, Settings], Iterable[MetricGroup]],
    json_suffix: str,
) -> int:
    """The shared main() of the evaluation programs: choose metrics, check folders, run, report.

    `requested` is the --metrics text; `metric_groups(inputs, settings)` lists the program's metrics.
    """
    forget_unreadable()
    try:
        metrics, notes = select_metrics(
            parse_metric_list(requested, metric_names), metric_names, inputs.unmet_needs()
        )
        settings = settings.resolved()
        inputs.check(metrics)
        for note in notes:
            print(note, file=sys.stderr)
        runner = MetricRunner()
        for names, compute in metric_groups(inputs, settings):
            chosen = [name for name in names if name in metrics]
            runner.run(chosen, functools.partial(compute, chosen))
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"{program}: error: {one_line(error)}") from None
    rec = inputs.rec.resolve()
    return finish(runner, settings.output_json or rec.parent / f"{rec.name}_{json_suffix}.json")


def fidelity_group(inputs: Inputs, settings: Settings) -> MetricGroup:
    """FID / KID / IS / precision-recall of the restored images against the FFHQ folder."""
    from evaluation.fidelity import calculate_fidelity_metrics

    def compute(names: list[str]) -> dict[str, object]:
        return calculate_fidelity_metrics(
            inputs.rec,
            inputs.ffhq,
            metrics=names,
            cache_root=settings.fidelity_cache_dir,
            use_cache=settings.use_fidelity_cache,
            **settings.weights,
            **settings.loading,
        )

    return FIDELITY, compute

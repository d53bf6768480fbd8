"""Restore degraded faces with a trained PMRF model.

Aligned faces (the official blind-face model expects square, FFHQ-aligned 512×512 faces):
    python inference.py --ckpt_path ohayonguy/PMRF_blind_face_image_restoration --ckpt_path_is_huggingface \
        --lq_data_path LQ --output_dir OUT
Ordinary photos (face detection, alignment and paste-back): add --whole_image. With it, videos (.mp4 .mov
.mkv .avi .webm, given or found in the folder) are restored frame by frame into OUT/<name>.mp4, with
their sound (see --crf and --temporal_smoothing).

Writes OUT/restored_images/ and, for models with a posterior-mean network, OUT/restored_images_posterior_mean/,
each file under its input's name. Aligned inputs of another size are resized (bicubic) to the model's
native size and written at that size; --input_size 0 keeps their size.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lightning_models.restoration import (
    AlignedOptions,
    FaceRestorer,
    input_size_problem,
    load_model,
    native_size,
    prepare_for_inference,
    read_model_config,
    restore_aligned,
)
from utils.auto_compile import describe, image_steps, should_compile
from utils.cli import (
    add_checkpoint_arguments,
    add_fidelity_weight_argument,
    add_output_arguments,
    add_runtime_arguments,
    check_writable_folder,
    existing_path,
    fail,
    int_range,
    non_negative_int,
    positive_int,
    resolve_device,
    seed_int,
)
from utils.images import (
    InputError,
    RunInterrupted,
    WriteError,
    collect_inputs,
    list_images,
    print_renamed,
    refuse_writing_into_inputs,
    terminate_as_interrupt,
)
from utils.precision import bf16_flag, configure_torch
from utils.weights import MissingWeightsError, WeightsReadError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(p)
    p.add_argument("-i", "--input", "--lq_data_path", dest="lq_data_path", type=existing_path, required=True,
                   help="a folder of degraded images, or one image")
    p.add_argument("-o", "--output", "--output_dir", dest="output_dir", required=True, help="where results go")
    p.add_argument("--num_flow_steps", type=int_range(1, 10_000), default=25, help="K, the number of Euler steps")
    add_fidelity_weight_argument(p)
    p.add_argument("--batch_size", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the source noise (default 0, this project's; the reference draws fresh noise every run)")
    p.add_argument("--num_workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                   help="image-decoding processes")
    p.add_argument("--input_size", type=non_negative_int, default=None,
                   help="aligned mode: resize inputs to N×N (default: the model's native size, 512 for the "
                        "blind-face model; 0: keep each input's size)")
    add_runtime_arguments(p)
    p.add_argument("--compile_mmse", action="store_true", help="with --compile, also compile the posterior-mean network")
    add_output_arguments(p)
    p.add_argument("--skip_existing", action="store_true",
                   help="leave inputs whose outputs are already in --output_dir (finish an interrupted run)")
    from whole_image.cli import add_whole_image_arguments

    add_whole_image_arguments(p, output_arguments=False)
    from whole_image.video_cli import add_video_arguments

    add_video_arguments(p)
    return p


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} file(s):", file=sys.stderr)
        for name, reason in skipped:
            print(f"  {name}: {reason}", file=sys.stderr)


def check_input_size(args: argparse.Namespace) -> None:
    """Refuse an input size the model cannot take before loading it (from the checkpoint's config)."""
    from whole_image.align import FACE_SIZE

    size = FACE_SIZE if args.whole_image else args.input_size
    if not size:
        return
    problem = input_size_problem(read_model_config(args.ckpt_path, args.ckpt_path_is_huggingface), size)
    if problem:
        option = "--whole_image (512×512 faces)" if args.whole_image else f"--input_size {size}"
        fail(f"{option}: the model of {args.ckpt_path} cannot take it: {problem}")


def compile_decision(args, model, device, inputs: list[Path], lq_path: Path) -> bool:
    """--compile resolved for this job (auto: on CUDA for a job of enough image-steps; a whole photo
    counts as one face)."""
    images = len(inputs) if inputs else (1 if lq_path.is_file() else len(list_images(lq_path)))
    size = args.input_size or native_size(model) or 512
    job = image_steps(images, args.num_flow_steps, size, size)
    compiled = should_compile(args.compile, device, job)
    note = describe(args.compile, compiled, job)
    if note:
        print(note, flush=True)
    return compiled


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with terminate_as_interrupt():  # SIGTERM ends the run as Ctrl-C does: whole files, one line
        try:
            run(args)
        except (InputError, MissingWeightsError, WeightsReadError, WriteError) as error:  # the library's
            fail(str(error))
        except RunInterrupted as interrupted:  # Ctrl-C or SIGTERM after whole files; says how many
            fail(str(interrupted), code=130)
        except KeyboardInterrupt:
            fail("interrupted before any image was written", code=130)


def run(args: argparse.Namespace) -> None:
    lq_path, output_dir = Path(args.lq_data_path), Path(args.output_dir)
    inputs = [] if args.whole_image else collect_inputs(lq_path)
    configure_torch()  # TF32 matmuls, as the reference
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        fail(str(error))
    if not args.whole_image:
        refuse_writing_into_inputs(inputs, output_dir, ["restored_images", "restored_images_posterior_mean"])
        check_writable_folder(output_dir)
    check_input_size(args)
    try:
        model = load_model(args.ckpt_path, args.ckpt_path_is_huggingface, device, use_ema=not args.use_raw_weights)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        fail(str(error))
    try:
        model.pmrf.check_fidelity_weight(args.fidelity_weight)
    except ValueError as error:
        fail(f"--{error}")
    compiled = compile_decision(args, model, device, inputs, lq_path)
    prepare_for_inference(model, args.attention_backend, compiled, args.compile_mmse)
    if args.whole_image:
        from whole_image.cli import WholeImageOptions, run_whole_image
        from whole_image.photo_batch import photo_inputs
        from whole_image.tools import load_tools
        from whole_image.video import VideoOptions
        from whole_image.video_cli import photos_and_videos, run_videos

        restorer = FaceRestorer(model, args.num_flow_steps, args.seed, args.bf16, args.fidelity_weight)
        options = WholeImageOptions.from_args(args)
        has_photos, videos = photos_and_videos(lq_path)  # these raise; main() says it in one line
        if has_photos and videos:  # detector, parser and upsampler loaded once for both, after the
            photo_inputs(options)  # photos' output checks, where restore_photos would load them
            tools = load_tools(options, device)
            run_whole_image(options, restorer, device, tools=tools)
            run_videos(options, VideoOptions.from_args(args), restorer, device, videos, tools)
        elif has_photos:
            run_whole_image(options, restorer, device)
        elif videos:
            run_videos(options, VideoOptions.from_args(args), restorer, device, videos)
        return
    options = AlignedOptions(
        num_flow_steps=args.num_flow_steps, batch_size=args.batch_size, seed=args.seed,
        precision=bf16_flag(args.bf16),
        num_workers=args.num_workers, input_size=args.input_size, suffix=args.suffix, ext=args.ext,
        jpeg_quality=args.jpeg_quality, pad_batches=compiled, fidelity_weight=args.fidelity_weight,
        skip_existing=args.skip_existing,
    )
    report = restore_aligned(model, inputs, output_dir, options)
    print_renamed(report.renamed, "input(s) would have written the same file as another")
    if report.existing:
        print(f"left {report.existing} image(s) whose outputs exist already (--skip_existing)")
    if report.resized:
        print(f"note: resized {report.resized} image(s) to the model's native size before restoring them")
    print(f"restored {report.written} image(s) into {output_dir / 'restored_images'}")
    report_skipped(report.skipped)
    if not report.written and not report.existing:
        fail("no image was restored (see the skipped files above)")


if __name__ == "__main__":
    main()

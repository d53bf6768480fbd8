"""The web demo under concurrent use: `app.py` as users run it, many whole-photo requests at once.

Starts `app.py` in its own process on loopback with a tiny PMRF model (random weights: speed and memory
do not depend on them) and the MTCNN detector (its weights ship with facenet-pytorch), then, for each
round, sends `--clients` whole-photo requests at the same moment through Gradio's client, each with its
own upload. It records per round: requests done, requests refused (the queue is bounded: `--queue_size`
wait while one runs; more are told the queue is full), other errors, latency p50 / p95 / max (from the
moment the requests are released until each answer is in), and the app process's peak resident memory
(VmHWM; and its resident memory once the round is over). A first round of one request gives the baseline; the load rounds follow. The app is then
stopped with SIGTERM and the script counts the files it left in its temporary folder (there should be
none).

The photo is scikit-image's astronaut (one face), enlarged to `--photo_side` pixels, restored at
`--upscale` with `--steps` flow steps.

    python benchmarks/app_load.py                          # 20 clients, queue 16 then 32; ~10 min on 2 busy cores
    python benchmarks/app_load.py --clients 20 --queue_sizes 16 --output_json app_load.json
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _proc_status_mib, _reset_peak_rss, format_table, parse_ints, save_json

ROOT = Path(__file__).resolve().parents[1]
WHOLE_PHOTO = "Whole photo (detect faces)"  # app.WHOLE_PHOTO (a script does not import the program)
TINY_HDIT = {
    "type": "hdit", "patch_size": [2, 2], "widths": [16, 32], "depths": [1, 1],
    "self_attns": [{"type": "neighborhood", "d_head": 8, "kernel_size": 3}, {"type": "global", "d_head": 8}],
    "mapping_width": 16, "mapping_depth": 1,
}
TINY_SWINIR = {"type": "swinir", "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4, "sf": 2,
               "img_size": 8}


def tiny_checkpoint(folder: Path) -> Path:
    """A PMRF checkpoint (tiny HDiT flow over a tiny SwinIR posterior mean) as train.py writes it."""
    import torch

    from lightning_models.mmse_rectified_flow import MMSERectifiedFlow

    torch.manual_seed(0)
    mmse = MMSERectifiedFlow(stage="mmse", arch=TINY_SWINIR)
    mmse_path = folder / "mmse.ckpt"
    torch.save({"state_dict": mmse.state_dict(), "hyper_parameters": dict(mmse.hparams),
                "ema": mmse.ema.state_dict()}, mmse_path)
    flow = MMSERectifiedFlow(stage="flow", arch=TINY_HDIT, mmse_model_ckpt_path=str(mmse_path))
    path = folder / "pmrf.ckpt"
    torch.save({"state_dict": flow.state_dict(), "hyper_parameters": dict(flow.hparams),
                "ema": flow.ema.state_dict(), "global_step": 0}, path)
    return path


def test_photo(folder: Path, side: int) -> Path:
    import cv2
    from skimage import data

    from utils.images import save_rgb

    photo = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC)
    return save_rgb(photo, folder / "astronaut.png")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class App:
    """app.py in its own process, its temporary files in a folder of its own (TMPDIR)."""

    def __init__(self, ckpt: Path, queue_size: int, temp: Path, extra: list[str]):
        from gradio_client import Client

        self.port = free_port()
        self.temp = temp
        env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
        env.update(TMPDIR=str(temp), GRADIO_ANALYTICS_ENABLED="False")
        command = [sys.executable, "app.py", "--ckpt_path", str(ckpt), "--device", "cpu", "--detector", "mtcnn",
                   "--face_mask", "ellipse", "--server_port", str(self.port), "--queue_size", str(queue_size), *extra]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        threading.Thread(target=lambda: [self.output.append(line) for line in self.process.stdout], daemon=True).start()
        deadline = time.monotonic() + 300
        while not any(f"127.0.0.1:{self.port}" in line for line in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("app.py did not start:\n" + "".join(self.output[-30:]))
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.Client = Client

    def stop(self) -> int:
        """SIGTERM, then the number of files left in the app's temporary folder."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return sum(1 for p in self.temp.rglob("*") if p.is_file() and p.relative_to(self.temp).parts[0].startswith(("pmrf_", "gradio")))


def one_round(app: App, photo: Path, clients: int, args: argparse.Namespace, downloads: Path) -> dict:
    """`clients` whole-photo requests released at one moment; latencies, refusals, errors, peak memory."""
    from gradio_client import handle_file

    connections = [app.Client(app.url, verbose=False, download_files=str(downloads)) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    results: list[tuple[str, float, str]] = [("", 0.0, "")] * clients
    start = [0.0]

    def request(index: int) -> None:
        barrier.wait()
        try:
            connections[index].predict(handle_file(str(photo)), WHOLE_PHOTO, args.steps, args.upscale, index,
                                       api_name="/restore")
            results[index] = ("done", time.monotonic() - start[0], "")
        except Exception as error:  # noqa: BLE001 (what a user would see, recorded)
            message = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
            kind = "refused" if "queue is full" in message.lower() else "error"
            results[index] = (kind, time.monotonic() - start[0], message)

    threads = [threading.Thread(target=request, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    _reset_peak_rss(app.process.pid)
    start[0] = time.monotonic()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start[0]
    done = sorted(latency for kind, latency, _ in results if kind == "done")
    messages = sorted({message for kind, _, message in results if kind != "done"})

    def percentile(q: float) -> float | None:
        return None if not done else float(np.percentile(done, q))

    return {
        "clients": clients,
        "done": len(done),
        "refused": sum(kind == "refused" for kind, _, _ in results),
        "errors": sum(kind == "error" for kind, _, _ in results),
        "p50_s": percentile(50),
        "p95_s": percentile(95),
        "max_s": max(done) if done else None,
        "mean_service_s": wall / len(done) if done else None,
        "wall_s": wall,
        "peak_rss_mib": _proc_status_mib("VmHWM", app.process.pid),
        "rss_after_mib": _proc_status_mib("VmRSS", app.process.pid),
        "messages": messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="20", help="concurrent requests of each load round (default 20; '20,40': two rounds)")
    parser.add_argument("--queue_sizes", default="16,32", help="app.py --queue_size of each run (default 16,32)")
    parser.add_argument("--steps", type=int, default=2, help="flow steps per request (default 2)")
    parser.add_argument("--upscale", type=float, default=2.0, help="output scale (default 2)")
    parser.add_argument("--photo_side", type=int, default=1024, help="side of the uploaded photo (default 1024)")
    parser.add_argument("--output_json", default=None, help="also save the figures here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="pmrf_app_load_") as scratch:
        scratch = Path(scratch)
        ckpt, photo = tiny_checkpoint(scratch), test_photo(scratch, args.photo_side)
        for queue_size in parse_ints(args.queue_sizes):
            temp = scratch / f"tmp_q{queue_size}"
            temp.mkdir()
            app = App(ckpt, queue_size, temp, [])
            try:
                rounds = [("1 alone (warm-up: loads the model)", 1), ("1 alone", 1)]
                rounds += [(f"{n} at once", n) for n in parse_ints(args.clients)]
                for label, clients in rounds:
                    row = one_round(app, photo, clients, args, scratch / "downloads")
                    row.update(queue_size=queue_size, round=label)
                    rows.append(row)
                    print(format_table([row], COLUMNS), flush=True)
            finally:
                left = app.stop()
            rows[-1]["files_left_after_sigterm"] = left
    print()
    print(f"tiny PMRF, MTCNN, {args.photo_side}² photo (one face), x{args.upscale:g}, {args.steps} flow steps, "
          f"{os.cpu_count()} CPU threads, load average {os.getloadavg()[0]:.1f}")
    print(format_table(rows, COLUMNS + [("files_left_after_sigterm", "files left")]))
    for row in rows:
        for message in row["messages"]:
            print(f"  queue {row['queue_size']}, {row['round']}: {message}")
    if args.output_json:
        save_json(args.output_json, {"settings": vars(args), "rows": rows,
                                     "load_average_1m": round(os.getloadavg()[0], 2)})


COLUMNS = [("queue_size", "queue"), ("round", "round"), ("done", "done"), ("refused", "refused"),
           ("errors", "errors"), ("p50_s", "p50 s"), ("p95_s", "p95 s"), ("max_s", "max s"),
           ("mean_service_s", "s/request"), ("peak_rss_mib", "peak RSS MiB"),
           ("rss_after_mib", "RSS after MiB")]


if __name__ == "__main__":
    main()

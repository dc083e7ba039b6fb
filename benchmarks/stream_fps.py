"""Stream overhead: frames/s through ``run_stream`` vs 1 / the Detector's median latency.

Both score the same frames (demo images written to a lossless video), headless, file source,
every frame in order (no drops). Passes alternate (direct, stream, direct, stream, ...) so a
shared, loaded machine hurts both alike; the table reports the median of the passes.
Target: stream FPS >= 0.9 x (1 / median latency). The last row, a plain loop's frames / total
time, is the stream's like-for-like baseline: on a loaded machine 1 / median flatters the
direct path, since outliers slow every throughput figure but not a median.

    python benchmarks/stream_fps.py                        # trains a tiny demo model first (~20 s)
    python benchmarks/stream_fps.py --model runs/demo --frames 300 --threads 2
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time


import _threads  # noqa: E402,F401  (applies --threads before numpy/torch load)

import cv2  # noqa: E402


def demo_model(workdir: str, image_size: int = 128) -> str:
    """Make a small demo dataset and train a tiny model on it (as the integration tests do)."""
    from hgad_edge import data
    from hgad_edge.config import ModelConfig, TrainConfig
    from hgad_edge.data.demo import make_demo_data
    from hgad_edge.train.loop import train

    root, run = os.path.join(workdir, "demo"), os.path.join(workdir, "run")
    make_demo_data(root, classes=("brick", "tissue", "coffee"), n_train=12, n_test_good=4, n_test_defect=5,
                   image_size=image_size, seed=0)
    classes = data.resolve_classes(root, None)
    train(root, run, ModelConfig(class_names=classes, image_size=image_size, coupling_blocks=2, n_intra=3, pos_dim=32),
          TrainConfig(epochs=3, batch_size=8, seed=0, stage1_epochs=1), progress=False)
    return run


def demo_frames(workdir: str, n: int, size: int) -> list:
    """``n`` frames cycling over demo test images (good and defective), ``size``²."""
    from hgad_edge.data.demo import make_demo_data

    root = os.path.join(workdir, "frames_data")
    if not os.path.isdir(root):
        make_demo_data(root, classes=("brick", "tissue", "coffee"), n_train=1, n_test_good=4, n_test_defect=5,
                       image_size=size, seed=1)
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                   if f.endswith(".png") and "/test/" in d.replace(os.sep, "/") and "ground_truth" not in d)
    images = [cv2.imread(p) for p in paths]
    return [images[i % len(images)] for i in range(n)]


def write_video(path: str, frames: list, fps: float = 30.0) -> str:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def direct_pass(det, frames) -> list:
    """Milliseconds of each Detector call."""
    out = []
    for f in frames:
        t = time.perf_counter()
        det(f)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def common_args(p: argparse.ArgumentParser, frames: int, frames_help: str, size: int) -> None:
    """The options the stream benchmarks share."""
    p.add_argument("--model", help="RUN_DIR (default: train a tiny demo model in a temp dir)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--frames", type=int, default=frames, help=frames_help)
    p.add_argument("--size", type=int, default=size, help="side of the synthetic frames")
    p.add_argument("--threads", type=int, help="intra-op threads (set before torch starts)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(p, frames=200, frames_help="frames per pass", size=256)
    p.add_argument("--repeats", type=int, default=3, help="alternating direct/stream passes")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hgad_edge.stream").setLevel(logging.ERROR)  # no ALARM lines in the table

    from hgad_edge.detector import Detector
    from hgad_edge.stream import StreamConfig, run_stream

    with tempfile.TemporaryDirectory(prefix="hgad_stream_fps_") as tmp:
        model = a.model or demo_model(tmp)
        frames = demo_frames(tmp, a.frames, a.size)
        video = write_video(os.path.join(tmp, "frames.avi"), frames)
        det = Detector(model, backend=a.backend, threads=a.threads)
        direct_pass(det, frames[:10])  # warm-up
        lat, loop_fps, stream_fps, jsonl_fps = [], [], [], []
        for rep in range(a.repeats):
            ms = direct_pass(det, frames)
            lat.append(statistics.median(ms))
            loop_fps.append(1e3 * len(ms) / sum(ms))
            s = run_stream(StreamConfig(source=video, alarm=(3, 5)), detector=det)
            assert s.frames_scored == a.frames and s.frames_dropped == 0, s
            stream_fps.append(s.fps)
            s2 = run_stream(StreamConfig(source=video, jsonl=os.path.join(tmp, f"e{rep}.jsonl")), detector=det)
            jsonl_fps.append(s2.fps)
            print(f"pass {rep + 1}/{a.repeats}: direct median {lat[-1]:.2f} ms ({1e3 / lat[-1]:.1f}/s), "
                  f"stream {s.fps:.1f} FPS, stream+jsonl {s2.fps:.1f} FPS", flush=True)
    ideal = 1e3 / statistics.median(lat)
    rows = [("detector direct (1 / median latency)", ideal), ("stream, headless", statistics.median(stream_fps)),
            ("stream, headless + --jsonl", statistics.median(jsonl_fps)),
            ("detector direct loop (frames / total s)", statistics.median(loop_fps))]
    print(f"\nbackend {det.backend}, {a.frames} frames {a.size}x{a.size}, model input {det.image_size}, "
          f"threads {a.threads or 'default'}, median of {a.repeats} passes")
    print(f"{'path':<40}{'frames/s':>10}{'ratio':>8}")
    for name, fps in rows:
        print(f"{name:<40}{fps:>10.2f}{fps / ideal:>8.3f}")
    ratio = rows[1][1] / ideal
    print(f"\nstream / direct = {ratio:.3f} (target >= 0.9): {'OK' if ratio >= 0.9 else 'BELOW TARGET'}")
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())

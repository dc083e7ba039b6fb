"""Stream soak: 10,000 headless frames from a looping synthetic source; RSS must stay flat.

Prints the resident set size after warm-up, every ``--report-every`` source frames and at the
end, and the growth (target < 50 MB). Two modes:

* default: a finite source, every frame scored in order (no drops);
* ``--slow-ms 40``: the source is paced at ``--source-fps`` (newest frame only) and each
  inference is slowed by 40 ms, so inference is slower than capture: frames are dropped and
  counted, and memory stays bounded (the hand-over holds one frame).

    python benchmarks/stream_soak.py                          # tiny demo model, 10,000 frames
    python benchmarks/stream_soak.py --frames 1000 --jsonl /tmp/soak.jsonl
    python benchmarks/stream_soak.py --frames 1000 --slow-ms 40 --source-fps 100
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _threads  # noqa: E402,F401  (applies --threads before numpy/torch load)
from stream_fps import common_args, demo_model  # noqa: E402

import numpy as np  # noqa: E402


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2 ** 20


class LoopingSource:
    """OpenCV-capture surface over a pool of synthetic frames, looped for ``n`` reads; every
    read returns a fresh array (as a camera driver does)."""

    def __init__(self, n: int, size: int, pool: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pool = []
        for i in range(pool):
            img = rng.integers(60, 120, (size, size, 3), dtype=np.uint8)
            if i >= pool - 4:  # a bright blob on 4 frames in a row: one alarm episode per loop
                img[size // 3: size // 2, size // 3: size // 2] = 250
            self.pool.append(img)
        self.n, self.i = n, 0

    def isOpened(self) -> bool:  # noqa: N802
        return True

    def read(self):
        if self.i >= self.n:
            return False, None
        frame = self.pool[self.i % len(self.pool)].copy()
        self.i += 1
        return True, frame

    def get(self, prop) -> float:
        return 0.0

    def release(self) -> None:
        pass


class SlowDetector:
    """Wraps a Detector and sleeps ``extra_ms`` per call (inference slower than capture)."""

    def __init__(self, det, extra_ms: float):
        self.det, self.extra = det, extra_ms / 1e3
        self.backend = f"{det.backend}+{extra_ms:g}ms"

    def class_index(self, name):
        return self.det.class_index(name)

    def __call__(self, frame, class_name=None):
        time.sleep(self.extra)
        return self.det(frame, class_name=class_name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(p, frames=10000, frames_help="source frames", size=96)
    p.add_argument("--report-every", type=int, default=1000, help="print RSS every this many source frames")
    p.add_argument("--slow-ms", type=float, default=0.0, help="extra ms per inference (0: no drops mode)")
    p.add_argument("--source-fps", type=float, default=100.0, help="source rate in --slow-ms mode")
    p.add_argument("--jsonl", help="also write the event log here (exercises the writer)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hgad_edge.stream").setLevel(logging.ERROR)  # no ALARM lines between the RSS rows

    from hgad_edge.detector import Detector
    from hgad_edge.stream import StreamConfig, run_stream

    with tempfile.TemporaryDirectory(prefix="hgad_soak_") as tmp:
        det = Detector(a.model or demo_model(tmp), backend=a.backend, threads=a.threads)
        warm = LoopingSource(20, a.size, seed=1)
        for _ in range(20):
            det(warm.read()[1])
        slow = a.slow_ms > 0
        detector = SlowDetector(det, a.slow_ms) if slow else det
        cfg = StreamConfig(source="synthetic.avi", realtime=slow, fps=a.source_fps if slow else None, jsonl=a.jsonl)
        start = rss_mb()
        samples = [(0, start)]
        t0 = time.perf_counter()
        print(f"soak: {a.frames} frames {a.size}x{a.size}, backend {detector.backend}, "
              f"{'source paced at %g FPS, newest frame only' % a.source_fps if slow else 'every frame in order'}")
        print(f"{'source frame':>12}{'RSS MB':>10}{'growth MB':>11}{'elapsed s':>11}")
        print(f"{'start':>12}{start:>10.1f}{0.0:>11.1f}{0.0:>11.1f}", flush=True)
        next_report = [a.report_every]

        def on_result(index: int, _r) -> None:
            if index + 1 >= next_report[0]:
                while index + 1 >= next_report[0]:
                    next_report[0] += a.report_every
                rss = rss_mb()
                samples.append((index + 1, rss))
                print(f"{index + 1:>12}{rss:>10.1f}{rss - start:>11.1f}{time.perf_counter() - t0:>11.1f}", flush=True)

        s = run_stream(cfg, detector=detector, capture_factory=lambda _src: LoopingSource(a.frames, a.size),
                       on_result=on_result)
        end = rss_mb()
    peak = max(r for _, r in samples + [(0, end)])
    print(f"{'end':>12}{end:>10.1f}{end - start:>11.1f}{time.perf_counter() - t0:>11.1f}")
    print(f"\n{s.format()}")
    growth = end - start
    print(f"\nRSS start {start:.1f} MB, end {end:.1f} MB, peak {peak:.1f} MB, growth {growth:+.1f} MB "
          f"(target < 50 MB): {'OK' if growth < 50 else 'ABOVE TARGET'}")
    if slow:
        print(f"drops counted: {s.frames_dropped} of {s.frames_read} source frames "
              f"(scored {s.frames_scored}, bad {s.bad_frames}; scored + dropped + bad = "
              f"{s.frames_scored + s.frames_dropped + s.bad_frames})")
    return 0 if growth < 50 else 1


if __name__ == "__main__":
    sys.exit(main())

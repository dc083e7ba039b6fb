"""The stream's command line: ``hgad-edge stream`` and ``python -m hgad_edge.stream``.

Exit status: 0 when the stream ended or was stopped (Ctrl-C / SIGTERM), 1 when a live source
was lost for good, 2 when it could not start (source, model, arguments), 130 on a second Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import Optional, Tuple

from hgad_edge.runtime.registry import add_arguments as add_runtime_arguments
from hgad_edge.stream.alarm import parse_alarm
from hgad_edge.stream.capture import SourceError
from hgad_edge.stream.loop import StreamConfig, run_stream


def _roi_arg(text: str) -> Tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"roi must be x,y,w,h in pixels (e.g. 100,50,320,240), got {text!r}") from e
    if min(x, y) < 0 or min(w, h) < 1:
        raise argparse.ArgumentTypeError(f"roi needs x, y >= 0 and w, h >= 1, got {text!r}")
    return x, y, w, h


def _alarm_arg(text: str) -> Optional[Tuple[int, int]]:
    try:
        return parse_alarm(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The stream options (shared by ``python -m hgad_edge.stream`` and ``hgad-edge stream``)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="N", help="camera index (/dev/videoN)")
    src.add_argument("--source", metavar="SRC", help="video file, image folder, rtsp:// or http:// URL, or a "
                     "GStreamer pipeline ending in appsink (contains '!')")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="trained (and exported) model directory")
    add_runtime_arguments(p)
    p.add_argument("--class", dest="class_name", help="product class (default: routed per frame)")
    p.add_argument("--target-fpr", type=float, help="override the stored false-positive rate of the thresholds")
    p.add_argument("--threads", type=int, help="backend intra-op threads")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="files/folders: pace at the source FPS and drop frames inference cannot keep up with "
                        "(default: every frame in order); live sources are always newest-frame-only")
    p.add_argument("--fps", type=float, help="source FPS for --realtime and --save (default: the source's, else 25)")
    p.add_argument("--headless", action="store_true", help="no window")
    p.add_argument("--save", metavar="OUT.mp4", help="write the annotated video (mp4v)")
    p.add_argument("--jsonl", metavar="EVENTS.jsonl", help="append one JSON line per scored frame and per alarm")
    p.add_argument("--alarm", type=_alarm_arg, default="3/5", metavar="N/M",
                   help="alarm when >= N of the last M frames are anomalous; 'off' for none")
    p.add_argument("--roi", type=_roi_arg, metavar="x,y,w,h", help="score only this crop (pixels)")
    p.add_argument("--max-frames", type=int, help="stop after this many scored frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--reconnect-attempts", type=int, default=10, help="per loss of a live source; -1: forever")
    p.add_argument("--reconnect-delay", type=float, default=0.5, help="first backoff delay, doubled each attempt")
    p.add_argument("--reconnect-max-delay", type=float, default=10.0, help="backoff cap in seconds")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="S",
                   help="print a progress line every S seconds (0: never)")


def config_from_args(a: argparse.Namespace) -> StreamConfig:
    return StreamConfig(
        source=a.camera if a.camera is not None else a.source, model=a.model, backend=a.backend, device=a.device,
        precision=a.precision,
        class_name=a.class_name, target_fpr=a.target_fpr, threads=a.threads, realtime=a.realtime, fps=a.fps,
        display=not a.headless, save=a.save, jsonl=a.jsonl, alarm=a.alarm, roi=a.roi, max_frames=a.max_frames,
        duration=a.duration, reconnect_attempts=a.reconnect_attempts, reconnect_delay=a.reconnect_delay,
        reconnect_max_delay=a.reconnect_max_delay)


def _cmd_stream(a: argparse.Namespace) -> int:
    """Run the stream; exit 0 when it ended or was stopped, 1 when a live source was lost for
    good, 2 when it could not start (source, model, arguments)."""
    from hgad_edge.artifact import ArtifactError

    stop = threading.Event()

    def _on_signal(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        print(f"\n{signal.Signals(signum).name}: stopping...", file=sys.stderr, flush=True)
        stop.set()

    last = [time.perf_counter(), 0]

    def _progress(index: int, r) -> None:
        last[1] += 1
        now = time.perf_counter()
        if a.progress_every > 0 and now - last[0] >= a.progress_every:
            print(f"frame {index}: {last[1]} scored, last {'ANOMALY' if r.is_anomaly else 'ok'} {r.score:.2f} "
                  f"({r.class_name}), {r.timings_ms.get('total', 0.0):.0f} ms", flush=True)
            last[0] = now

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_stream(config_from_args(a), stop_event=stop, on_result=_progress)
    except (SourceError, ArtifactError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        print(f"hgad-edge stream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the second Ctrl-C; threads and outputs were closed on the way out
        print("hgad-edge stream: interrupted", file=sys.stderr)
        return 130
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    print(summary.format(), flush=True)
    return 1 if summary.ended_by == "source_lost" else 0


def register(sub) -> None:
    """Add ``hgad-edge stream`` to the main CLI's subparsers."""
    s = sub.add_parser("stream", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="score a camera, video, URL, GStreamer pipeline or image folder live")
    add_arguments(s)
    s.set_defaults(func=_cmd_stream)


def main(argv=None) -> int:
    import hgad_edge.stream as package

    p = argparse.ArgumentParser(prog="python -m hgad_edge.stream", description=package.__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_arguments(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return _cmd_stream(a)

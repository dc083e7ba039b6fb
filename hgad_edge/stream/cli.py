"""The stream's command line: ``hgad-edge stream`` and ``python -m hgad_edge.stream``.

Exit status: 0 when the stream ended or was stopped (Ctrl-C / SIGTERM), 1 when a live source
was lost for good (any source, with several), 2 when it could not start (source, sources file,
model, arguments, address in use), 130 on a second Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from hgad_edge.parsing import OneLineParser
from hgad_edge.runtime.registry import add_arguments as add_runtime_arguments
from hgad_edge.stream.alarm import parse_alarm
from hgad_edge.stream.capture import MAX_CAMERA_INDEX, SourceError, check_camera_index
from hgad_edge.stream.multi import MultiStreamConfig, run_sources
from hgad_edge.stream.sources import DEFAULT_ALARM, check_number, from_flags, load_sources, parse_roi

TOKEN_ENV = "HGAD_SERVE_TOKEN"
DESCRIPTION = ("Score cameras, video files, RTSP/HTTP streams, GStreamer pipelines or image folders live "
               "with a trained model; several sources are scored in one batch.")


def _roi_arg(text: str) -> Tuple[int, int, int, int]:
    try:
        return parse_roi(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _alarm_arg(text: str) -> Optional[Tuple[int, int]]:
    try:
        return parse_alarm(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _camera_arg(text: str) -> Tuple[str, int]:
    try:
        return "camera", check_camera_index(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"camera index must be an integer 0-{MAX_CAMERA_INDEX} (/dev/videoN), "
                                         f"got {text!r}") from None


def _source_arg(text: str) -> Tuple[str, str]:
    if not text.strip():
        raise argparse.ArgumentTypeError("source must not be empty")
    return "source", text


def _serve_arg(text: str) -> Tuple[str, int]:
    from hgad_edge.stream.server import parse_serve

    try:
        return parse_serve(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


# The command line's own numbers (the others are the configuration's, checked there):
# (attribute, flag, lowest, highest, integer, lowest excluded)
CLI_NUMBERS = (("progress_every", "--progress-every", 0, 86400, False, False),
               ("serve_fps", "--serve-fps", 0, 60, False, True),
               ("event_queue", "--event-queue", 1, 1_000_000, True, False),
               ("event_retries", "--event-retries", 0, 1000, True, False))


def check_cli_numbers(a: argparse.Namespace) -> None:
    """A ``ValueError`` naming the first command-line-only number out of its range (given or not
    used: a bad value is a mistake either way)."""
    for attr, flag, lo, hi, integer, lo_open in CLI_NUMBERS:
        check_number(flag, getattr(a, attr), lo, hi, integer=integer, lo_open=lo_open)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The stream options (shared by ``python -m hgad_edge.stream`` and ``hgad-edge stream``)."""
    src = p.add_argument_group("sources (at least one; repeat --camera/--source for several, in any mix)")
    src.add_argument("--camera", dest="inputs", action="append", type=_camera_arg, metavar="N",
                     help="camera index (/dev/videoN)")
    src.add_argument("--source", dest="inputs", action="append", type=_source_arg, metavar="SRC",
                     help="video file, image folder, rtsp:// or http:// URL, or a GStreamer pipeline ending in "
                          "appsink (contains '!')")
    src.add_argument("--sources", metavar="FILE", help="YAML or JSON file of sources, each with an id, a camera or "
                     "source, and optionally its own class, roi, alarm, target_fpr, realtime, fps (see README)")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="trained (and exported) model directory")
    add_runtime_arguments(p)
    per = p.add_argument_group("per-source defaults (a sources file can set each per source)")
    per.add_argument("--class", dest="class_name", help="product class (default: routed per frame)")
    per.add_argument("--roi", type=_roi_arg, metavar="x,y,w,h", help="score only this crop (pixels)")
    per.add_argument("--alarm", type=_alarm_arg, default=DEFAULT_ALARM_ARG, metavar="N/M",
                     help="alarm when >= N of the last M frames are anomalous; 'off' for none")
    per.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                     help="files/folders: pace at the source FPS and drop frames inference cannot keep up with "
                          "(default: every frame in order); live sources are always newest-frame-only")
    per.add_argument("--fps", type=float, help="source FPS for --realtime and --save (default: the source's, else 25)")
    p.add_argument("--target-fpr", type=float, help="override the stored false-positive rate of the thresholds "
                   "(a source's own target_fpr in --sources overrides this)")
    p.add_argument("--threads", type=int, help="backend intra-op threads")
    p.add_argument("--max-batch", type=int, metavar="N", help="at most N frames per detector call; when not "
                   "given, the number of sources (the newest frame of every source in one batch)")
    p.add_argument("--headless", action="store_true", help="no window")
    p.add_argument("--save", metavar="OUT.mp4", help="write the annotated video (mp4v); with several sources the "
                   "path needs {source}, e.g. out_{source}.mp4")
    p.add_argument("--jsonl", metavar="EVENTS.jsonl", help="append one JSON line per scored frame and per alarm "
                   "(every record has its 'source')")
    p.add_argument("--max-frames", type=int, help="a source stops after this many scored frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--reconnect-attempts", type=int, default=10, help="per loss of a live source; -1: forever")
    p.add_argument("--reconnect-delay", type=float, default=0.5, help="first backoff delay, doubled each attempt")
    p.add_argument("--reconnect-max-delay", type=float, default=10.0, help="backoff cap in seconds")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="S",
                   help="print a progress line every S seconds (0: never)")
    web = p.add_argument_group("live web view (read-only; needs hgad_edge[web])")
    web.add_argument("--serve", type=_serve_arg, metavar="[HOST:]PORT",
                     help="serve the live view at http://HOST:PORT/ (HOST defaults to 127.0.0.1, this machine "
                          "only; 0.0.0.0 serves every interface; PORT 0 picks a free one)")
    web.add_argument("--serve-token", metavar="TOKEN", help=f"every page and endpoint needs this token (>= 8 "
                     f"characters; open /?token=TOKEN once); default: ${TOKEN_ENV}, which keeps it out of ps")
    web.add_argument("--serve-fps", type=float, default=5.0,
                     help="at most this many JPEGs per source and second, encoded only while a page views it")
    ev = p.add_argument_group("event outputs (alarms; never block scoring)")
    ev.add_argument("--webhook", action="append", metavar="URL", help="POST every alarm as JSON to URL (repeatable)")
    ev.add_argument("--mqtt", metavar="HOST[:PORT]", help="publish every alarm as JSON to this MQTT broker "
                    "(port 1883 by default; needs hgad_edge[mqtt]; $HGAD_MQTT_USERNAME/$HGAD_MQTT_PASSWORD)")
    ev.add_argument("--mqtt-topic", default="hgad_edge/events", metavar="TOPIC", help="MQTT topic")
    ev.add_argument("--mqtt-qos", type=int, default=1, choices=(0, 1, 2), help="MQTT quality of service")
    ev.add_argument("--event-frames", action="store_true", help="also send every anomalous frame, not only alarms")
    ev.add_argument("--event-queue", type=int, default=1000, metavar="N",
                    help="events held per output while it is down; the oldest are dropped (and counted) beyond")
    ev.add_argument("--event-retries", type=int, default=5, metavar="N",
                    help="retries per event, backoff 0.5 s doubling up to 10 s")


class _DefaultAlarm:
    """The --alarm default (told apart from an explicit --alarm off, which parses to None)."""

    def __repr__(self) -> str:
        return f"{DEFAULT_ALARM[0]}/{DEFAULT_ALARM[1]}"

    __str__ = __repr__


DEFAULT_ALARM_ARG = _DefaultAlarm()


def _per_source_defaults(a: argparse.Namespace) -> Dict[str, Any]:
    """The command line's per-source options in the sources file's spelling."""
    alarm = DEFAULT_ALARM if a.alarm is DEFAULT_ALARM_ARG else a.alarm
    d: Dict[str, Any] = {"alarm": f"{alarm[0]}/{alarm[1]}" if alarm else "off"}
    for key, value in (("class", a.class_name), ("roi", a.roi), ("realtime", a.realtime), ("fps", a.fps)):
        if value is not None:
            d[key] = list(value) if key == "roi" else value
    return d


def config_from_args(a: argparse.Namespace) -> MultiStreamConfig:
    """The run configuration of the parsed command line.

    Raises:
        ValueError: no source, a bad sources file (naming line and field), bad options."""
    inputs: List[Tuple[str, Any]] = list(a.inputs or [])
    if not inputs and not a.sources:
        raise ValueError("no source: give --camera N, --source SRC (each repeatable) or --sources FILE")
    check_cli_numbers(a)
    defaults = _per_source_defaults(a)
    specs = from_flags(inputs, defaults, short_ids=bool(a.sources) or len(inputs) > 1)
    if a.sources:
        specs += load_sources(a.sources, defaults, taken=[s.id for s in specs])
    return MultiStreamConfig(
        sources=tuple(specs), model=a.model, backend=a.backend, device=a.device, precision=a.precision,
        target_fpr=a.target_fpr, threads=a.threads, max_batch=a.max_batch, display=not a.headless, save=a.save,
        jsonl=a.jsonl, max_frames=a.max_frames, duration=a.duration, reconnect_attempts=a.reconnect_attempts,
        reconnect_delay=a.reconnect_delay, reconnect_max_delay=a.reconnect_max_delay,
        protected=(("--sources", a.sources),) if a.sources else ())


def make_sinks(a: argparse.Namespace) -> Tuple[List[Any], Any]:
    """The event outputs and the web view (started) the options ask for: (sinks, web view or None)."""
    from hgad_edge.stream.events import MqttSink, WebhookSink

    token = a.serve_token or os.environ.get(TOKEN_ENV) or None
    if token and not a.serve:
        raise ValueError("--serve-token (or $HGAD_SERVE_TOKEN) without --serve")
    common = dict(frames=a.event_frames, queue_size=a.event_queue, retries=a.event_retries)
    sinks: List[Any] = []
    view = None
    try:
        for url in a.webhook or []:
            sinks.append(WebhookSink(url, **common))
        if a.mqtt:
            sinks.append(MqttSink(a.mqtt, topic=a.mqtt_topic, qos=a.mqtt_qos, **common))
        if a.serve:
            from hgad_edge.stream.server import WebView

            outputs = {s.name: s.stats for s in sinks}
            view = WebView(a.serve[0], a.serve[1], token=token, serve_fps=a.serve_fps,
                           extra_status={"outputs": lambda: {k: f() for k, f in outputs.items()}})
            view.start_server()
            print(f"live view: {view.url}", file=sys.stderr, flush=True)
            sinks.append(view)
    except BaseException:
        close_sinks(sinks)
        raise
    return sinks, view


def close_sinks(sinks: List[Any]) -> None:
    for s in sinks:  # event outputs first (they flush), the web view last
        try:
            s.close()
        except Exception as e:  # noqa: BLE001 (exiting anyway)
            logging.getLogger("hgad_edge.stream").warning("closing %s: %s", type(s).__name__, e)


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

    def _progress(sid: str, index: int, r) -> None:
        last[1] += 1
        now = time.perf_counter()
        if a.progress_every > 0 and now - last[0] >= a.progress_every:
            where = f"{sid} " if several else ""
            print(f"{where}frame {index}: {last[1]} scored, last {'ANOMALY' if r.is_anomaly else 'ok'} {r.score:.2f} "
                  f"({r.class_name}), {r.timings_ms.get('total', 0.0):.0f} ms", flush=True)
            last[0] = now

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    sinks: List[Any] = []
    try:
        cfg = config_from_args(a)
        several = len(cfg.sources) > 1
        sinks, _ = make_sinks(a)
        summary = run_sources(cfg, stop_event=stop, on_result=_progress, sinks=sinks)
    except (SourceError, ArtifactError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        print(f"hgad-edge stream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the second Ctrl-C; threads and outputs were closed on the way out
        print("hgad-edge stream: interrupted", file=sys.stderr)
        return 130
    finally:
        close_sinks(sinks)
        for s, h in previous.items():
            signal.signal(s, h)
    print((summary.sources[0] if len(summary.sources) == 1 else summary).format(), flush=True)
    return 1 if any(s.ended_by == "source_lost" for s in summary.sources) else 0


def register(sub) -> None:
    """Add ``hgad-edge stream`` to the main CLI's subparsers."""
    s = sub.add_parser("stream", formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=DESCRIPTION,
                       help="score cameras, videos, URLs, GStreamer pipelines or image folders live")
    add_arguments(s)
    s.set_defaults(func=_cmd_stream)


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m hgad_edge.stream", description=DESCRIPTION,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_arguments(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return _cmd_stream(a)

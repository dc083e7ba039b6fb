"""Several sources, one inference loop: the newest frame of every source that has one is
scored in one batch (``Detector.predict``), so the backbone and flows run once per batch.

One capture thread per source (``capture.py``) keeps only that source's newest frame (live
sources, ``realtime`` files) or hands every frame over in order (files, folders); a lost source
reconnects on its own thread and never stalls the others. Each source has its own class, ROI,
alarm and target FPR, counters and latencies; every record carries its ``source`` id.
``run_stream`` (one source) is this with one source. The loop itself: ``batching.py``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from hgad_edge.data.images import images_in
from hgad_edge.fileio import check_outputs
from hgad_edge.stream.batching import BatchLoop
from hgad_edge.stream.capture import (CaptureFactory, CaptureThread, FrameBuffer, SourceError, is_live, open_capture,
                                      open_checked, source_kind)
from hgad_edge.stream.outputs import JsonlLog, VideoOut, Window, check_roi
from hgad_edge.stream.sources import FPS_RANGE, SourceSpec, check_fpr, check_number
from hgad_edge.stream.state import MultiSummary, SourceState, Thresholds  # noqa: F401 (MultiSummary: public here)

log = logging.getLogger("hgad_edge.stream")
SOURCE_PLACEHOLDER = "{source}"
MAX_THREADS = 1024


@dataclass(frozen=True)
class MultiStreamConfig:
    """Sources and where the results go (the per-source options live in each ``SourceSpec``).

    Args:
        sources: one ``SourceSpec`` per source (ids unique).
        model, backend, device, precision, target_fpr, threads: passed to ``Detector``.
        max_batch: at most this many frames per detector call (default: the number of sources).
        display: one window per source. save: annotated video path; with several sources it
            must contain ``{source}`` (replaced by each id). jsonl: one event log for all.
        max_frames: a source ends after this many scored frames. duration: all stop after this
            many seconds.
        reconnect_attempts, reconnect_delay, reconnect_max_delay, queue_size: as ``StreamConfig``.
        protected: further input files no output may overwrite, as ``(name, path)`` pairs (the
            command line's ``--sources`` file); the sources, their images and the model's files
            always are.
    """

    sources: Tuple[SourceSpec, ...]
    model: Optional[str] = None
    backend: str = "auto"
    device: str = "auto"
    precision: Optional[str] = None
    target_fpr: Optional[float] = None
    threads: Optional[int] = None
    max_batch: Optional[int] = None
    display: bool = False
    save: Optional[str] = None
    jsonl: Optional[str] = None
    max_frames: Optional[int] = None
    duration: Optional[float] = None
    reconnect_attempts: int = 10
    reconnect_delay: float = 0.5
    reconnect_max_delay: float = 10.0
    queue_size: int = 4
    protected: Tuple[Tuple[str, str], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "protected", tuple(tuple(p) for p in self.protected))
        if not self.sources or not all(isinstance(s, SourceSpec) for s in self.sources):
            raise ValueError("sources must be a non-empty sequence of SourceSpec")
        ids = [s.id for s in self.sources]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"source ids must be unique; repeated: {dup}")
        check_limits(self)
        if self.save and len(self.sources) > 1 and SOURCE_PLACEHOLDER not in self.save:
            raise ValueError(f"with several sources --save needs {SOURCE_PLACEHOLDER} in the path "
                             f"(e.g. annotated_{SOURCE_PLACEHOLDER}.mp4), got {self.save!r}")
        outputs = self.output_paths()
        for name, path in outputs.items():
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise ValueError(f"output folder {folder!r} of {path!r} does not exist")
            if os.path.isdir(path):
                raise ValueError(f"{name} {path} is a folder: give a file name")
        check_outputs(outputs, self.input_paths())  # an output never overwrites an input or another output

    def save_path(self, spec: SourceSpec) -> Optional[str]:
        """The annotated video of ``spec`` (``{source}`` replaced by its id), or None."""
        if not self.save:
            return None
        return self.save.replace(SOURCE_PLACEHOLDER, re.sub(r"[^A-Za-z0-9_.-]", "_", spec.id))

    def output_paths(self) -> Dict[str, str]:
        """Every file the run writes, by the flag that names it."""
        several = len(self.sources) > 1
        out = {f"--save ({s.id})" if several else "--save": self.save_path(s) for s in self.sources if self.save}
        if self.jsonl:
            out["--jsonl"] = self.jsonl
        return out

    def input_paths(self) -> Dict[str, str]:
        """Every file the run reads, by the flag that names it: source files, the images of
        source folders, the model's files and ``protected``."""
        several = len(self.sources) > 1
        out: Dict[str, str] = dict(self.protected)
        for s in self.sources:
            flag = f"--source ({s.id})" if several else "--source"
            kind = source_kind(s.source)
            if kind == "file":
                out[flag] = str(s.source)
            elif kind == "folder":
                out.update((f"{flag} image", p) for p in images_in(str(s.source)))
        if self.model and os.path.isdir(self.model):
            for name in sorted(os.listdir(self.model)):
                if os.path.isfile(os.path.join(self.model, name)):
                    out[f"--model file {name}"] = os.path.join(self.model, name)
        return out

    @property
    def batch_limit(self) -> int:
        return self.max_batch or len(self.sources)


def check_limits(cfg) -> None:
    """The numeric options of a stream configuration (``MultiStreamConfig``, ``StreamConfig``):
    a ``ValueError`` naming the first one that is not a finite number in its range."""
    for name, lo, integer in (("max_batch", 1, True), ("max_frames", 1, True), ("threads", 1, True),
                              ("duration", 0, False)):
        v = getattr(cfg, name, None)
        if v is not None:
            check_number(name, v, lo, MAX_THREADS if name == "threads" else math.inf, integer=integer,
                         lo_open=not integer)
    if cfg.target_fpr is not None:
        check_fpr(cfg.target_fpr)
    check_number("reconnect_attempts", cfg.reconnect_attempts, -1, integer=True)
    check_number("reconnect_delay", cfg.reconnect_delay, 0)
    check_number("reconnect_max_delay", cfg.reconnect_max_delay, cfg.reconnect_delay)
    check_number("queue_size", cfg.queue_size, 1, integer=True)


def run_sources(cfg: MultiStreamConfig, detector=None, stop_event: Optional[threading.Event] = None,
                capture_factory: Optional[CaptureFactory] = None,
                on_result: Optional[Callable[[str, int, Any], None]] = None,
                sinks: Sequence[Any] = ()) -> MultiSummary:
    """Score every source until each ended, ``duration`` passed or ``stop_event`` is set.

    Args:
        cfg: the sources and outputs.
        detector: a ready ``Detector`` (default: one built from ``cfg.model``/``backend``/...).
        stop_event: set it (signal handler, another thread) to stop cleanly.
        capture_factory: ``source -> capture`` (OpenCV's VideoCapture surface) for every source;
            also used to reconnect.
        on_result: called as ``on_result(source_id, frame_index, result)`` after each scored frame.
        sinks: objects with ``record(rec)`` (every record, must not block) and optionally
            ``start(info)``, ``wants_image(source_id) -> bool`` and ``image(source_id, args)``
            (``args`` = ``(frame, result, box, fps, latency_ms, alarm_on)`` for ``annotate``);
            the web view and the event outputs. The caller closes them.

    Raises:
        SourceError: a source cannot be opened, or no source delivered a frame.
        ValueError: bad configuration (unknown class, roi outside the frame, ...).
    """
    import cv2

    stop_event = stop_event or threading.Event()
    if detector is None and not cfg.model:
        raise ValueError("the model (a RUN_DIR) is needed when no detector is given")
    several = len(cfg.sources) > 1
    prefix = (lambda spec: f"source {spec.id}: ") if several else (lambda spec: "")
    caps: List[Any] = []
    try:
        for spec in cfg.sources:  # first: a wrong source fails before the model loads
            try:
                caps.append(open_checked(spec.source, capture_factory))
            except SourceError as e:
                raise SourceError(prefix(spec) + str(e)) from None
        rates = []
        for spec, cap in zip(cfg.sources, caps):  # then what the first frame would refuse, still before the model
            src_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            rates.append(spec.fps or (src_fps if FPS_RANGE[0] <= src_fps <= FPS_RANGE[1] else 25.0))
            width, height = (int(cap.get(p) or 0) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
            try:
                if spec.roi is not None and width > 0 and height > 0:
                    check_roi(spec.roi, width, height)
                if cfg.save:
                    VideoOut.check(cfg.save_path(spec), rates[-1])
            except ValueError as e:
                raise ValueError(prefix(spec) + str(e)) from None
    except BaseException:
        for cap in caps:
            cap.release()
        raise
    own_detector = detector is None
    states: List[SourceState] = []
    jsonl: Optional[JsonlLog] = None
    wake = threading.Event()
    try:
        if detector is None:
            from hgad_edge.detector import Detector

            detector = Detector(cfg.model, backend=cfg.backend, device=cfg.device, precision=cfg.precision,
                                target_fpr=cfg.target_fpr, threads=cfg.threads)
        thresholds = []
        for spec in cfg.sources:
            try:
                detector.class_index(spec.class_name)  # an unknown class fails here, naming the known ones
                thresholds.append(Thresholds(detector, spec.target_fpr))
            except ValueError as e:
                raise ValueError(prefix(spec) + str(e)) from None
        jsonl = JsonlLog(cfg.jsonl)
        for spec, cap, thr, fps in zip(cfg.sources, caps, thresholds, rates):
            live = is_live(spec.source)
            count = 0 if live else int(max(0.0, float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)))
            realtime = live or bool(spec.realtime)
            if live and spec.realtime is False:
                log.info("live sources are always scored newest-frame-only; realtime=False ignored (%s)", spec.id)
            buffer = FrameBuffer(1 if realtime else cfg.queue_size, drop=realtime, wake=wake)
            halt = threading.Event()
            grabber = CaptureThread(cap, spec.source, buffer, halt, capture_factory or open_capture, live,
                                    pace_fps=fps if realtime and not live else 0.0,
                                    reconnect_attempts=cfg.reconnect_attempts, reconnect_delay=cfg.reconnect_delay,
                                    reconnect_max_delay=cfg.reconnect_max_delay, name=f"hgad-capture-{spec.id}",
                                    label=repr(spec.display) if not several else f"{spec.id} ({spec.display})",
                                    expected_frames=count)
            save = cfg.save_path(spec)
            window = Window.open(f"hgad-edge {spec.id}" if several else "hgad-edge stream") if cfg.display else None
            states.append(SourceState(spec, grabber, buffer, halt, fps, realtime, thr,
                                      VideoOut(save, fps) if save else None, window))
    except BaseException:
        for i, cap in enumerate(caps):
            if i >= len(states):
                cap.release()
        for s in states:
            s.grabber.cap.release()
            for out in (s.video, s.window):
                if out is not None:
                    out.close()
        if jsonl is not None:
            jsonl.close()
        if own_detector and detector is not None:
            detector.close()
        raise
    backend = str(getattr(detector, "backend", "custom"))
    loop = BatchLoop(cfg, detector, backend, states, jsonl, list(sinks), wake, stop_event, on_result)
    try:
        return loop.run()
    finally:
        if own_detector:
            detector.close()



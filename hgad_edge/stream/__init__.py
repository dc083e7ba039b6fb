"""Live scoring: capture threads, the (batched, multi-source) inference loop, outputs (window,
video, JSONL), N-of-M alarms, the live web view and event outputs (webhook, MQTT).

``python -m hgad_edge.stream --model RUN_DIR --camera 0`` (or ``hgad-edge stream``); several
sources: ``--camera 0 --source rtsp://... --sources sources.yaml``.
"""
from hgad_edge.stream.alarm import AlarmDebouncer, alarm_frames, parse_alarm
from hgad_edge.stream.capture import SourceError
from hgad_edge.stream.loop import ENDINGS, StreamConfig, StreamSummary, run_stream
from hgad_edge.stream.multi import MultiStreamConfig, MultiSummary, run_sources
from hgad_edge.stream.outputs import annotate
from hgad_edge.stream.sources import SourceSpec, SourcesError, load_sources

__all__ = ["AlarmDebouncer", "alarm_frames", "parse_alarm", "SourceError", "ENDINGS", "StreamConfig",
           "StreamSummary", "run_stream", "MultiStreamConfig", "MultiSummary", "run_sources", "SourceSpec",
           "SourcesError", "load_sources", "annotate"]

"""Sources of a multi-camera stream: flags and YAML/JSON files → validated SourceSpecs, and
errors that name the file, line and field (the CLI exits 2 with one line)."""
import json
import os
import textwrap

import pytest

from hgad_edge.stream.cli import main as stream_main
from hgad_edge.stream.sources import SourcesError, SourceSpec, from_flags, load_sources, redact

GOOD_YAML = """\
# a line with three stations
defaults:
  alarm: 2/4
  target_fpr: 0.01
sources:
  - id: station1
    camera: 0
    class: brick
    roi: [10, 20, 300, 200]
  - id: station2
    source: "rtsp://user:secret@10.0.0.2/stream"
    alarm: off
    target_fpr: 0.001
  - source: clips/line3.mp4
    realtime: true
    fps: 12.5
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_yaml_file_with_defaults_and_per_source_options(tmp_path):
    path = write(tmp_path, "sources.yaml", GOOD_YAML)
    specs = load_sources(path, defaults={"alarm": "3/5", "class": "tissue"})
    assert [s.id for s in specs] == ["station1", "station2", "line3"]
    a, b, c = specs
    assert (a.source, a.class_name, a.roi, a.alarm, a.target_fpr) == (0, "brick", (10, 20, 300, 200), (2, 4), 0.01)
    assert (b.alarm, b.target_fpr, b.class_name) == (None, 0.001, "tissue")  # `off`; the CLI default class
    assert b.display == "rtsp://user:***@10.0.0.2/stream"  # the password never reaches a page or an event
    assert c.source == os.path.join(str(tmp_path), "clips", "line3.mp4")  # relative to the file
    assert (c.realtime, c.fps, c.alarm) == (True, 12.5, (2, 4))


def test_json_file_is_the_same_format(tmp_path):
    data = {"sources": [{"id": "left", "camera": 1, "alarm": [1, 2]}, {"source": "rtsp://cam/right"}]}
    specs = load_sources(write(tmp_path, "s.json", json.dumps(data, indent=2)))
    assert [(s.id, s.source, s.alarm) for s in specs] == [("left", 1, (1, 2)), ("src2", "rtsp://cam/right", (3, 5))]
    bare = load_sources(write(tmp_path, "list.json", json.dumps([{"camera": 3}, {"camera": 3, "id": "again"}])))
    assert [s.id for s in bare] == ["cam3", "again"]


@pytest.mark.parametrize("text, where", [
    ("sources:\n  - id: a\n    camera: 0\n  - id: b\n    source: x.mp4\n    alarm: 5/3\n",
     ":6: sources[1].alarm: alarm N/M needs 1 <= N <= M, got 5/3"),
    ("sources:\n  - id: a\n    camera: 0\n    colour: red\n", ":4: sources[0].colour: unknown key"),
    ("sources:\n  - id: a\n    camera: 0\n  - id: a\n    camera: 1\n", ":4: sources[1].id: duplicate id 'a'"),
    ("sources:\n  - id: a\n", ":2: sources[0]: needs exactly one of 'camera'"),
    ("sources:\n  - {id: a, camera: 0, source: x.mp4}\n", ":2: sources[0]: needs exactly one of 'camera'"),
    ("sources:\n  - id: a\n    camera: 0\n    roi: [1, 2, 0, 4]\n",
     ":4: sources[0].roi: roi needs x, y >= 0 and w, h >= 1"),
    ("sources:\n  - id: a\n    camera: 0\n    target_fpr: 1.5\n",
     ":4: sources[0].target_fpr: target_fpr must be in (0, 1)"),
    ("sources:\n  - id: 'a b/c'\n    camera: 0\n", ":2: sources[0].id: must be 1-64 letters"),
    ("sources:\n  - camera: -1\n", ":2: sources[0].camera: must be a camera index >= 0"),
    ("defaults:\n  alarm: 3/5\n  model: x\nsources:\n  - camera: 0\n", ":3: defaults.model: unknown key"),
    ("defaults:\n  alarm: nine\nsources:\n  - camera: 0\n", ":2: defaults.alarm: alarm must look like N/M"),
    ("sources: []\n", ":1: sources: must be a non-empty list"),
    ("cameras:\n  - 0\n", ":1: cameras: unknown key"),
    ("sources:\n  - id: a\n    camera: 0\n   bad indent: 1\n", ":4: not valid YAML"),
])
def test_bad_yaml_names_the_line_and_field(tmp_path, text, where):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(SourcesError) as e:
        load_sources(path)
    assert str(e.value).startswith(path + where.split(": ", 1)[0]) and where.split(": ", 1)[1] in str(e.value)


def test_bad_json_names_the_line_too(tmp_path):
    bad_field = '{\n  "sources": [\n    {"id": "a", "camera": 0},\n    {"id": "b", "camera": 1, "fps": -3}\n  ]\n}\n'
    path = write(tmp_path, "bad.json", bad_field)
    with pytest.raises(SourcesError, match=r"bad\.json:4: sources\[1\]\.fps: fps must be a number >= 0\.01"):
        load_sources(path)
    path = write(tmp_path, "broken.json", '{\n  "sources": [\n    {"id": "a",, "camera": 0}\n  ]\n}\n')
    with pytest.raises(SourcesError, match=r"broken\.json:3: not valid JSON"):
        load_sources(path)
    with pytest.raises(SourcesError, match="missing.yaml"):
        load_sources(str(tmp_path / "missing.yaml"))


def test_flag_sources_get_short_ids_when_several_and_keep_the_source_when_one():
    specs = from_flags([("camera", 0), ("source", "/data/line3.mp4"), ("source", "rtsp://h/x"),
                        ("source", "/other/line3.mp4")], {"alarm": "off", "roi": [0, 0, 5, 5]})
    assert [s.id for s in specs] == ["cam0", "line3", "src3", "line3-2"]
    assert all(s.alarm is None and s.roi == (0, 0, 5, 5) for s in specs)
    one = from_flags([("source", "rtsp://admin:pw@cam/1")])
    assert one[0].id == "rtsp://admin:***@cam/1" and one[0].alarm == (3, 5)  # as single-source records were
    assert redact("rtsp://cam/1") == "rtsp://cam/1" and redact(4) == "4"
    with pytest.raises(ValueError, match="roi"):
        SourceSpec(id="a", source=0, roi=(0, 0, 0, 1))


def test_cli_bad_sources_file_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, "s.yaml", "sources:\n  - id: a\n    camera: 0\n    alarm: 7/2\n")
    assert stream_main(["--model", str(tmp_path / "no_model"), "--sources", path, "--headless"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hgad-edge stream: error: {path}:4: sources[0].alarm: alarm N/M needs 1 <= N <= M, got 7/2"]
    assert stream_main(["--model", str(tmp_path / "no_model"), "--headless"]) == 2  # no source at all
    assert "no source: give --camera N, --source SRC" in capsys.readouterr().err
    two = ["--model", "m", "--source", "a.mp4", "--source", "b.mp4", "--headless", "--save", str(tmp_path / "o.mp4")]
    assert stream_main(two) == 2
    assert "--save needs {source}" in capsys.readouterr().err

// hgad_edge live view: one tile per source (annotated frame, verdict, score, class, FPS,
// latency, score plot) and the alarm list. Read-only: it only GETs /api/*.
// Data is put into the page with textContent only, never as HTML.
"use strict";

const tiles = new Map();      // source id -> {root, els, history, seq, ended}
let historyS = 300;
let alarmCount = 0;
const MAX_ALARMS = 200;

function $(root, sel) { return root.querySelector(sel); }
function fmt(v, digits) { return (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(digits); }
function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }

async function getJSON(path) {
  const r = await fetch(path, {cache: "no-store", credentials: "same-origin"});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function makeTile(src) {
  const node = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
  node.dataset.source = src.id;
  const els = {
    id: $(node, ".tile-id"), state: $(node, ".state"), frame: $(node, ".frame"), img: $(node, "img.live"),
    flag: $(node, ".flag"), score: $(node, ".score"), cls: $(node, ".cls"), conf: $(node, ".conf"),
    fps: $(node, ".fps"), lat: $(node, ".lat"), latq: $(node, ".latq"), counts: $(node, ".counts"), plot: $(node, ".plot"),
    url: $(node, ".url"),
  };
  els.id.textContent = src.id;
  els.url.textContent = src.url || "";
  els.img.dataset.seq = "0";
  document.getElementById("tiles").appendChild(node);
  const tile = {root: node, els, history: [], seq: 0, ended: false, id: src.id};
  tiles.set(src.id, tile);
  frameLoop(tile);
  return tile;
}

function showFrame(tile, rec) {
  const e = tile.els;
  e.flag.textContent = rec.is_anomaly ? "ANOMALY" : "ok";
  e.flag.className = "flag " + (rec.is_anomaly ? "bad" : "ok");
  e.score.textContent = fmt(rec.score, 3);
  e.cls.textContent = rec["class"];
  e.conf.textContent = "(" + fmt(rec.confidence, 2) + ")";
  e.lat.textContent = fmt(rec.latency_ms, 1) + " ms";
  tile.root.dataset.score = e.score.textContent;
  tile.root.dataset.frame = String(rec.frame);
  tile.root.classList.toggle("anomaly", !!rec.is_anomaly);
}

function showStatus(tile, s) {
  const e = tile.els;
  const state = s.state || "running";
  e.state.textContent = state === "ended" && s.ended_by ? "ended: " + s.ended_by : state;
  e.state.className = "badge state " + state;
  tile.root.dataset.state = state;
  if (state === "ended") { tile.ended = true; tile.root.classList.add("ended"); }
  if (s.fps !== undefined) e.fps.textContent = fmt(s.fps, 1) + " FPS";
  if (s.latency_p50_ms !== undefined) {
    e.latq.textContent = "p50 " + fmt(s.latency_p50_ms, 1) + " / p99 " + fmt(s.latency_p99_ms, 1) + " ms";
  }
  if (s.frames_read !== undefined) {
    e.counts.textContent = s.frames_scored + " scored, " + s.frames_dropped + " dropped, " + s.bad_frames +
      " bad, " + s.reconnects + " reconnects";
  }
}

function addPoint(tile, t, score, anomalous) {
  tile.history.push([t, score, anomalous ? 1 : 0]);
  const cut = Date.now() / 1000 - historyS;
  while (tile.history.length && tile.history[0][0] < cut) tile.history.shift();
}

function drawPlot(tile) {
  const c = tile.els.plot, g = c.getContext("2d");
  const w = c.width, h = c.height, now = Date.now() / 1000;
  const pts = tile.history;
  // the span grows with the data, from 30 s up to the server's history (5 min by default)
  const span = Math.min(historyS, Math.max(30, pts.length ? now - pts[0][0] : 0));
  g.clearRect(0, 0, w, h);
  const y = (s) => h - 8 - Math.max(0, Math.min(1, s)) * (h - 16);
  const x = (t) => (1 - (now - t) / span) * (w - 4) + 2;
  g.strokeStyle = "#5a4a2a"; g.setLineDash([4, 4]); g.beginPath(); g.moveTo(0, y(0.5)); g.lineTo(w, y(0.5));
  g.stroke(); g.setLineDash([]);
  g.fillStyle = "#8b95a3"; g.font = "10px sans-serif";
  g.fillText(span >= 90 ? "-" + Math.round(span / 60) + " min" : "-" + Math.round(span) + " s", 4, h - 2);
  g.fillText("now", w - 22, h - 2);
  g.fillText("score 0.5 = threshold", 4, y(0.5) - 3);
  if (!pts.length) return;
  g.strokeStyle = "#6cb4ee"; g.lineWidth = 1.5; g.beginPath();
  pts.forEach((p, i) => { if (i) g.lineTo(x(p[0]), y(p[1])); else g.moveTo(x(p[0]), y(p[1])); });
  g.stroke();
  g.fillStyle = "#d8433d";
  for (const p of pts) if (p[2]) g.fillRect(x(p[0]) - 1.5, y(p[1]) - 1.5, 3, 3);
}

function addAlarm(rec, prepend) {
  const li = document.createElement("li");
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = clock(rec.time) + " ";
  li.appendChild(when);
  li.appendChild(document.createTextNode(rec.source + ": " + rec.anomalous + " of " + rec.window +
    " frames anomalous, frame " + rec.frame + ", score " + fmt(rec.score, 3) + " (" + rec["class"] + ")"));
  const list = document.getElementById("alarms");
  if (prepend) list.insertBefore(li, list.firstChild); else list.appendChild(li);
  while (list.children.length > MAX_ALARMS) list.removeChild(list.lastChild);
  alarmCount += 1;
  document.getElementById("alarm-count").textContent = String(alarmCount);
}

async function frameLoop(tile) {
  // Long-polls the newest JPEG; the server encodes only while a page asks, at most --serve-fps.
  let url = null;
  while (!tile.ended) {
    try {
      const r = await fetch("/api/frame?source=" + encodeURIComponent(tile.id) + "&after=" + tile.seq,
                            {cache: "no-store", credentials: "same-origin"});
      if (r.status === 200) {
        const blob = await r.blob();
        tile.seq = Number(r.headers.get("X-Frame-Seq")) || tile.seq + 1;
        const next = URL.createObjectURL(blob);
        tile.els.img.src = next;
        tile.els.img.dataset.seq = String(tile.seq);
        tile.els.frame.classList.add("has");
        if (url) URL.revokeObjectURL(url);
        url = next;
      } else if (r.status !== 204) {
        await new Promise((ok) => setTimeout(ok, 2000));
      }
    } catch (err) {
      await new Promise((ok) => setTimeout(ok, 1000));
    }
  }
}

function connectEvents() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/events");
  es.onopen = () => { conn.textContent = "live"; conn.className = "badge on"; };
  es.onerror = () => { conn.textContent = "reconnecting"; conn.className = "badge off"; };
  es.addEventListener("frame", (ev) => {
    const rec = JSON.parse(ev.data), tile = tiles.get(rec.source);
    if (!tile) return;
    showFrame(tile, rec);
    addPoint(tile, rec.time, rec.score, rec.is_anomaly);
  });
  es.addEventListener("alarm", (ev) => {
    const rec = JSON.parse(ev.data), tile = tiles.get(rec.source);
    addAlarm(rec, true);
    if (tile) {
      tile.root.classList.add("alarm");
      clearTimeout(tile.alarmTimer);
      tile.alarmTimer = setTimeout(() => tile.root.classList.remove("alarm"), 5000);
    }
  });
  es.addEventListener("summary", (ev) => {
    const rec = JSON.parse(ev.data), tile = tiles.get(rec.source);
    if (tile) showStatus(tile, {state: "ended", ended_by: rec.ended_by});
  });
}

async function refresh() {
  try {
    const st = await getJSON("/api/status?history=0");
    for (const s of st.sources) { const t = tiles.get(s.id); if (t) showStatus(t, s); }
    document.getElementById("meta").textContent = "backend " + st.backend + " · batch ≤ " + st.max_batch +
      " · up " + Math.round(st.uptime_s) + " s";
  } catch (err) { /* the next refresh retries */ }
}

async function main() {
  let st = await getJSON("/api/status");
  while (!st.sources.length) {  // the model is still loading
    await new Promise((ok) => setTimeout(ok, 1000));
    st = await getJSON("/api/status");
  }
  historyS = st.history_s || historyS;
  for (const s of st.sources) {
    const tile = makeTile(s);
    for (const p of s.history || []) tile.history.push(p);
    if (s.last) showFrame(tile, s.last);
    showStatus(tile, s);
  }
  for (const a of (st.alarms || []).slice().reverse()) addAlarm(a, true);
  connectEvents();
  setInterval(refresh, 1000);
  setInterval(() => tiles.forEach(drawPlot), 500);
  refresh();
}

main().catch((err) => { document.getElementById("meta").textContent = "cannot load status: " + err.message; });

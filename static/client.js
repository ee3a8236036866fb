// thoughtstream browser client: watch a run's events over Socket.IO or SSE, with resync.
//
//   import { watchRun } from "./client.js";
//   const w = watchRun(runId, { transport: "socketio" | "sse", onEvent, onStatus, onConnection });
//   w.close();
//
// Guarantees the viewer builds on (DESIGN.md, "The event contract"):
// * every accepted event has seq === lastSeq + 1; anything at or below lastSeq is dropped
//   (belt and braces: the server already sends each event once), a hole triggers a resync;
// * after any reconnect the watch resubscribes from lastSeq (Socket.IO `subscribe {after}`,
//   SSE `?last_event_id=`), so the stream continues with no gap and no duplicate;
// * a STATUS {state: "resumed", rewind_to} folds the log: events after rewind_to from the
//   failed attempt are discarded and onRewind hands the kept events over for a rebuild;
// * a `reset` (the log's start was trimmed, or our cursor fell behind it) clears the watch
//   and restarts from what the server still keeps; onReset says so.
//
// Plain ES module, no build step. The Socket.IO browser library is loaded on demand from
// static/node_modules (npm install --prefix static); without it only SSE is available.

export const TERMINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);
// Beside this file: static/ is served at the server's root, node_modules included.
export const SOCKETIO_LIB = new URL("./node_modules/socket.io-client/dist/socket.io.esm.min.js", import.meta.url).href;

export function isTerminal(ev) {
  return ev.ns === "STATUS" && TERMINAL_STATES.has(ev.data && ev.data.state);
}

/** Fold the `resumed` rewinds of a log: what a run that never crashed would have sent. */
export function foldRewinds(events) {
  let out = [];
  for (const ev of events) {
    if (ev.ns === "STATUS" && ev.data && ev.data.state === "resumed" && Number.isInteger(ev.data.rewind_to)) {
      out = out.filter((e) => e.seq <= ev.data.rewind_to);
    }
    out.push(ev);
  }
  return out;
}

const noop = () => {};
const sseDrivers = new Set(); // live SSE streams, for dropConnections()

/**
 * Watch one run. Options:
 *   transport     "socketio" (default) or "sse"
 *   after         resume after this seq (e.g. when switching transport); default: from the start
 *   events        the events already held for `after` (kept for rewinds)
 *   baseUrl       server origin, default the page's
 *   onEvent(ev)                 each new event, in seq order, once
 *   onStatus(state, ev)         each STATUS event
 *   onRewind({events, resumed}) a resumed STATUS folded the log: rebuild from `events`
 *   onReset({reason, first_seq, message}) history was trimmed: rebuild from the events that follow
 *   onConnection(state, detail) "connecting" | "live" | "reconnecting" | "resynced" | "ended" | "error"
 *   onSnapshot(run)             the run record (Socket.IO subscribe ack)
 *   onEnd({status})             the run ended (terminal STATUS / run_end)
 *   onError({code, message})    the watch cannot go on (unknown run, expired log, ...)
 */
export function watchRun(runId, options = {}) {
  const transport = options.transport === "sse" ? "sse" : "socketio";
  const w = new Watch(runId, options);
  w.transport = transport;
  const driver = transport === "sse" ? new SSEDriver(w) : new SocketIODriver(w);
  w.driver = driver;
  // Start after returning, so no callback runs before the caller holds the watch.
  queueMicrotask(() => { if (!w.closed) driver.start(); });
  return w;
}

class Watch {
  constructor(runId, o) {
    this.runId = runId;
    this.baseUrl = (o.baseUrl || "").replace(/\/$/, "");
    this.lastSeq = Number.isInteger(o.after) && o.after > 0 ? o.after : null;
    this.events = Array.isArray(o.events) ? o.events.slice() : [];
    this.ended = false;
    this.closed = false;
    this.connection = "idle";
    this.stats = { received: 0, dropped: 0, reconnects: 0, resyncs: 0 };
    this.cb = {
      onEvent: o.onEvent || noop, onStatus: o.onStatus || noop, onRewind: o.onRewind || noop,
      onReset: o.onReset || noop, onConnection: o.onConnection || noop, onSnapshot: o.onSnapshot || noop,
      onEnd: o.onEnd || noop, onError: o.onError || noop,
    };
  }

  /** The cursor to resume from: null means "from the first event the server keeps". */
  get cursor() {
    return this.lastSeq;
  }

  setConnection(state, detail = {}) {
    if (this.closed && state !== "ended") return;
    this.connection = state;
    this.cb.onConnection(state, { transport: this.transport, lastSeq: this.lastSeq, ...detail });
  }

  /** Returns "ok" | "dup" | "gap". Only "ok" events reach the viewer. */
  accept(ev) {
    if (this.closed || !ev || ev.run_id !== this.runId || !Number.isInteger(ev.seq)) return "dup";
    this.stats.received += 1;
    const last = this.lastSeq ?? 0;
    if (ev.seq <= last) {
      this.stats.dropped += 1;
      return "dup";
    }
    if (this.lastSeq !== null && ev.seq !== last + 1) return "gap";
    this.lastSeq = ev.seq;
    if (ev.ns === "STATUS" && ev.data && ev.data.state === "resumed" && Number.isInteger(ev.data.rewind_to)) {
      const rewindTo = ev.data.rewind_to;
      this.events = this.events.filter((e) => e.seq <= rewindTo);
      this.events.push(ev);
      this.cb.onRewind({ events: this.events.slice(), resumed: ev });
      this.cb.onStatus("resumed", ev);
      return "ok";
    }
    this.events.push(ev);
    this.cb.onEvent(ev);
    if (ev.ns === "STATUS") this.cb.onStatus(ev.data && ev.data.state, ev);
    if (isTerminal(ev)) this.end(ev.data.state);
    return "ok";
  }

  /** The server no longer has our history: start over from what it keeps. */
  reset(info) {
    this.stats.resyncs += 1;
    this.lastSeq = null;
    this.events = [];
    this.cb.onReset(info || {});
  }

  end(status) {
    if (this.ended) return;
    this.ended = true;
    this.cb.onEnd({ status });
    this.setConnection("ended", { status });
    this.driver && this.driver.stop();
  }

  fail(error) {
    this.ended = true;
    this.cb.onError(error);
    this.setConnection("error", error);
    this.driver && this.driver.stop();
  }

  close() {
    if (this.closed) return;
    this.driver && this.driver.stop();
    this.closed = true;
  }
}

// ---------------------------------------------------------------- SSE

// A fetch()-based EventSource: the event names are the run's namespaces, an open set (user
// graphs add their own), and EventSource only delivers named events to listeners registered
// by name in advance. fetch also reads the JSON error of a 404/410 and leaves reconnection
// (with ?last_event_id=) to us, so the cursor is always our lastSeq.
class SSEDriver {
  constructor(w) {
    this.w = w;
    this.abort = null;
    this.timer = null;
    this.attempt = 0;
    this.everOpen = false;
    this.stopped = false;
    this.onOffline = () => this.drop("browser offline");
    this.onOnline = () => this.reconnectSoon(0);
  }

  start() {
    sseDrivers.add(this);
    window.addEventListener("offline", this.onOffline);
    window.addEventListener("online", this.onOnline);
    this.w.setConnection("connecting");
    this.connect();
  }

  stop() {
    this.stopped = true;
    sseDrivers.delete(this);
    window.removeEventListener("offline", this.onOffline);
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  url() {
    const base = `${this.w.baseUrl}/runs/${encodeURIComponent(this.w.runId)}/events`;
    return this.w.cursor === null ? base : `${base}?last_event_id=${this.w.cursor}`;
  }

  drop(reason) {
    if (this.stopped) return;
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.w.setConnection("reconnecting", { reason });
    if (navigator.onLine !== false) this.reconnectSoon();
  }

  reconnectSoon(delay) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    if (delay === undefined) {
      delay = Math.min(250 * 2 ** this.attempt, 5000) * (0.8 + Math.random() * 0.4);
      this.attempt += 1;
    }
    this.timer = setTimeout(() => this.connect(), delay);
  }

  async connect() {
    if (this.stopped) return;
    if (this.abort) this.abort.abort();
    const ctrl = new AbortController();
    this.abort = ctrl;
    let res;
    try {
      res = await fetch(this.url(), { headers: { Accept: "text/event-stream" }, cache: "no-store", signal: ctrl.signal });
    } catch (err) {
      if (ctrl.signal.aborted) return;
      this.w.setConnection("reconnecting", { reason: String(err && err.message || err) });
      this.reconnectSoon();
      return;
    }
    if (!res.ok) {
      let error = { code: `http_${res.status}`, message: res.statusText };
      try {
        const body = await res.json();
        if (body && body.error) error = body.error;
      } catch (_) { /* not JSON */ }
      if (this.stopped || ctrl.signal.aborted) return;
      if (res.status === 410 && error.code === "cursor_expired") {
        this.w.reset({ reason: "cursor_expired", first_seq: error.first_seq, message: error.message });
        this.reconnectSoon(0);
      } else if (res.status >= 500 || res.status === 429) {
        this.w.setConnection("reconnecting", { reason: error.message });
        this.reconnectSoon();
      } else {
        this.w.fail(error);
      }
      return;
    }
    this.attempt = 0;
    if (this.everOpen) {
      this.w.stats.reconnects += 1;
      this.w.setConnection("resynced", { after: this.w.cursor });
    } else {
      this.w.setConnection("live");
    }
    this.everOpen = true;
    try {
      await this.read(res.body, ctrl);
    } catch (err) {
      if (ctrl.signal.aborted || this.stopped) return;
      this.w.setConnection("reconnecting", { reason: String(err && err.message || err) });
      this.reconnectSoon();
      return;
    }
    if (ctrl.signal.aborted || this.stopped || this.w.ended) return;
    // The server closed the stream before the run ended (restart, slow-consumer drop, proxy).
    this.w.setConnection("reconnecting", { reason: "stream closed by the server" });
    this.reconnectSoon();
  }

  async read(body, ctrl) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let frame = { event: "message", data: [], id: null };
    const dispatch = () => {
      const f = frame;
      frame = { event: "message", data: [], id: null };
      if (!f.data.length) return true;
      return this.onFrame(f.event, f.data.join("\n"), ctrl);
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      // One linear scan per chunk (a catch-up can bring megabytes at once).
      let start = 0;
      let i = 0;
      while (i < buf.length) {
        const c = buf.charCodeAt(i);
        if (c !== 10 && c !== 13) { i += 1; continue; }
        if (c === 13 && i === buf.length - 1) break; // maybe half of a CRLF: wait for more
        const line = buf.slice(start, i);
        i += c === 13 && buf.charCodeAt(i + 1) === 10 ? 2 : 1;
        start = i;
        if (line === "") {
          if (!dispatch()) { reader.cancel().catch(noop); return; }
          continue;
        }
        if (line[0] === ":") continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val[0] === " ") val = val.slice(1);
        if (field === "event") frame.event = val;
        else if (field === "data") frame.data.push(val);
        else if (field === "id") frame.id = val;
      }
      buf = buf.slice(start);
    }
  }

  /** Returns false to stop reading this stream. */
  onFrame(name, data, ctrl) {
    let payload;
    try {
      payload = JSON.parse(data);
    } catch (_) {
      return true;
    }
    if (name === "reset") {
      if (payload.reason === "log_trimmed" && this.w.cursor === null) {
        // First connect, no cursor: the stream starts at first_seq. Say so, then go on.
        this.w.reset(payload);
        return true;
      }
      this.w.reset(payload);
      ctrl.abort();
      this.reconnectSoon(0);
      return false;
    }
    const r = this.w.accept(payload);
    if (r === "gap") {
      ctrl.abort();
      this.w.setConnection("reconnecting", { reason: `missing events after seq ${this.w.cursor}` });
      this.reconnectSoon(0);
      return false;
    }
    return !this.w.ended;
  }
}

// ---------------------------------------------------------------- Socket.IO

let socketLib = null; // Promise<{io} | {error}>

/** Load the Socket.IO browser client once. Resolves {io} or {error: "why not"}. */
export function loadSocketIO(url = SOCKETIO_LIB) {
  if (!socketLib) {
    socketLib = import(url).then(
      (mod) => (mod && typeof mod.io === "function" ? { io: mod.io } : { error: "the Socket.IO library did not load" }),
      () => ({ error: "the Socket.IO browser library is not installed on the server (run npm ci --prefix static)" }),
    );
  }
  return socketLib;
}

/** Does the server have a Socket.IO endpoint? Resolves {ok} or {ok:false, error}. */
export async function probeSocketIO(baseUrl = "") {
  const lib = await loadSocketIO();
  if (lib.error) return { ok: false, error: lib.error };
  try {
    // An unknown transport makes engine.io answer 400 without opening a session; 404 means
    // there is no Socket.IO endpoint at all.
    const res = await fetch(`${baseUrl}/socket.io/?EIO=4&transport=probe`, { cache: "no-store" });
    if (res.status === 404) return { ok: false, error: "this server has no Socket.IO endpoint (/socket.io/)" };
    return { ok: true };
  } catch (err) {
    return { ok: false, error: `the Socket.IO endpoint is unreachable: ${err && err.message || err}` };
  }
}

const hubs = new Map(); // baseUrl -> Hub: one socket per server, many runs per socket

class Hub {
  constructor(io, baseUrl) {
    this.watches = new Map(); // runId -> SocketIODriver
    this.offline = false;
    this.everConnected = false;
    this.socket = io(baseUrl || undefined, {
      path: "/socket.io/",
      transports: ["websocket", "polling"],
      tryAllTransports: true,
      reconnectionDelay: 300,
      reconnectionDelayMax: 3000,
      randomizationFactor: 0.3,
      timeout: 8000,
    });
    const s = this.socket;
    s.on("connect", () => {
      this.connectErrors = 0;
      const again = this.everConnected;
      this.everConnected = true;
      for (const d of this.watches.values()) d.subscribe(again);
    });
    s.on("disconnect", (reason) => {
      for (const d of this.watches.values()) d.lost(reason);
      if (reason === "io server disconnect" && !this.offline) s.connect(); // server kicked us: come back
    });
    this.connectErrors = 0;
    s.on("connect_error", (err) => {
      const why = (err && err.message) || "connect error";
      this.connectErrors += 1;
      if (!this.everConnected && this.connectErrors >= 3) {
        // Never connected (a proxy without WebSocket, a refused Origin, ...): give up on
        // Socket.IO for this page so the viewer can fall back to SSE.
        s.disconnect();
        hubs.delete(baseUrl);
        for (const d of [...this.watches.values()]) {
          d.w.fail({ code: "socketio_unavailable", message: `cannot connect to the Socket.IO endpoint (${why})` });
        }
        return;
      }
      for (const d of this.watches.values()) d.lost(why);
    });
    s.on("event", (ev) => {
      const d = ev && this.watches.get(ev.run_id);
      if (d) d.onEvent(ev);
    });
    // Subscribed with batch: true, the server sends the events that are ready together:
    // one WebSocket frame for many events, as SSE writes them.
    s.on("events", (list) => {
      if (!Array.isArray(list)) return;
      for (const ev of list) {
        const d = ev && this.watches.get(ev.run_id);
        if (d) d.onEvent(ev);
      }
    });
    s.on("run_end", (msg) => {
      const d = msg && this.watches.get(msg.run_id);
      if (d) d.onRunEnd(msg);
    });
    s.on("reset", (msg) => {
      const d = msg && this.watches.get(msg.run_id);
      if (d) d.onReset(msg);
    });
    // Browsers keep an open WebSocket through a network change and notice only at the next
    // heartbeat timeout; when the browser itself says it is offline, drop and resync at once.
    window.addEventListener("offline", () => {
      this.offline = true;
      if (s.connected || s.active) s.disconnect();
      for (const d of this.watches.values()) d.lost("browser offline");
    });
    window.addEventListener("online", () => {
      if (!this.offline) return;
      this.offline = false;
      s.connect();
    });
  }

  add(driver) {
    this.watches.set(driver.w.runId, driver);
    if (this.socket.connected) driver.subscribe(false);
    else if (!this.socket.active && !this.offline) this.socket.connect();
  }

  remove(driver) {
    if (this.watches.get(driver.w.runId) === driver) {
      this.watches.delete(driver.w.runId);
      if (this.socket.connected) this.socket.emit("unsubscribe", { run_id: driver.w.runId });
    }
  }
}

class SocketIODriver {
  constructor(w) {
    this.w = w;
    this.hub = null;
    this.stopped = false;
    this.subscribed = false;
    this.token = 0;
    this.endNudged = false;
  }

  async start() {
    this.w.setConnection("connecting");
    const lib = await loadSocketIO();
    if (this.stopped) return;
    if (lib.error) {
      this.w.fail({ code: "socketio_unavailable", message: lib.error });
      return;
    }
    const key = this.w.baseUrl;
    if (!hubs.has(key)) hubs.set(key, new Hub(lib.io, key));
    this.hub = hubs.get(key);
    const prev = this.hub.watches.get(this.w.runId);
    if (prev && prev !== this) prev.stop();
    this.hub.add(this);
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    if (this.hub) this.hub.remove(this);
  }

  lost(reason) {
    if (this.stopped) return;
    this.subscribed = false;
    this.token += 1; // acks of the old connection no longer count
    this.w.setConnection("reconnecting", { reason });
  }

  async subscribe(isReconnect) {
    if (this.stopped) return;
    const token = ++this.token;
    const payload = { run_id: this.w.runId, batch: true };
    if (this.w.cursor !== null) payload.after = this.w.cursor;
    let ack;
    try {
      ack = await this.hub.socket.timeout(10000).emitWithAck("subscribe", payload);
    } catch (err) {
      if (this.stopped || token !== this.token) return;
      this.w.setConnection("reconnecting", { reason: "subscribe timed out" });
      if (this.hub.socket.connected) setTimeout(() => token === this.token && this.subscribe(true), 500);
      return;
    }
    if (this.stopped || token !== this.token) return;
    if (!ack || ack.ok !== true) {
      const error = (ack && ack.error) || { code: "subscribe_failed", message: "subscribe was refused" };
      if (error.code === "cursor_expired") {
        this.w.reset({ reason: "cursor_expired", first_seq: error.first_seq, message: error.message });
        this.subscribe(isReconnect);
        return;
      }
      this.w.fail(error);
      return;
    }
    this.subscribed = true;
    if (ack.run) this.w.cb.onSnapshot(ack.run);
    if (isReconnect || this.w.connection === "reconnecting") {
      this.w.stats.reconnects += 1;
      this.w.setConnection("resynced", { after: payload.after ?? null });
    } else {
      this.w.setConnection("live");
    }
  }

  onEvent(ev) {
    if (this.stopped) return;
    const r = this.w.accept(ev);
    if (r === "gap") {
      // A hole in live seqs: ask again from our cursor; duplicates from the room are dropped.
      this.w.setConnection("reconnecting", { reason: `missing events after seq ${this.w.cursor}` });
      this.subscribe(true);
    }
  }

  onReset(msg) {
    if (this.stopped) return;
    if (msg.reason === "log_trimmed") {
      // Subscribed with no cursor and the log's start is gone: events follow from first_seq.
      if (this.w.cursor === null) this.w.reset(msg);
      return;
    }
    if (msg.reason === "cursor_expired") {
      // Our cursor fell behind the retained log: start over from what the server keeps.
      this.w.reset(msg);
      this.subscribe(true);
      return;
    }
    this.w.fail({ code: msg.reason || "reset", message: msg.message || "the run's log is gone" });
  }

  onRunEnd(msg) {
    if (this.stopped || this.w.ended) return;
    if (!this.endNudged) {
      // run_end came before the terminal STATUS reached us: read the rest of the log once.
      this.endNudged = true;
      this.subscribe(true);
      return;
    }
    this.w.end(msg.status);
  }
}

/**
 * Drop every live connection as a network failure would (for tests and for trying the
 * resync by hand in DevTools): Socket.IO transports close and the manager reconnects,
 * SSE streams break and reconnect with their cursor.
 */
export function dropConnections() {
  for (const hub of hubs.values()) {
    const engine = hub.socket.io && hub.socket.io.engine;
    if (engine) engine.close();
  }
  for (const d of sseDrivers) d.drop("connection dropped");
}

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
// Credentials (issue 10): setCredential(jwt or API key) once; every fetch made here sends it
// (authFetch), SSE streams open with a short-lived ticket (POST /runs/{id}/ticket), Socket.IO
// connects with `auth: {token}` / `{api_key}`. A watch whose credential is refused, expired or
// revoked pauses in the "unauthorized" state and continues from its cursor once
// setCredential() brings a new one; onAuthProblem() tells the page when to ask for it.
//
// Delivery contexts (issue 13): watchContext(key, {onInbox, onEvent, onState}) follows
// GET /contexts/{key}/events - INBOX first, then the context's events, resumed by cursor.
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

// ---------------------------------------------------------------- credentials

// What the server answers 401 with; "revoked" arrives on the streams (auth_revoked).
export const AUTH_ERROR_CODES = new Set(["unauthenticated", "invalid_token", "token_expired", "revoked"]);

// header.payload.signature, each base64url; the signature may be empty (alg none: the
// server refuses it, and saying so as a token error is clearer than "unknown API key").
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** A pasted string as {kind: "jwt" | "api_key", value}, or null when blank. */
export function parseCredential(raw) {
  if (raw && typeof raw === "object" && (raw.kind === "jwt" || raw.kind === "api_key")) return raw;
  let value = typeof raw === "string" ? raw.trim() : "";
  // People paste whole header lines from curl examples.
  value = value.replace(/^(authorization:\s*)?bearer\s+/i, "").replace(/^x-api-key:\s*/i, "").trim();
  if (!value) return null;
  return Object.freeze({ kind: JWT_SHAPE.test(value) ? "jwt" : "api_key", value });
}

/** The HTTP headers that carry a credential. */
export function authHeaders(cred = credential) {
  if (!cred) return {};
  return cred.kind === "jwt" ? { Authorization: `Bearer ${cred.value}` } : { "X-Api-Key": cred.value };
}

/** The Socket.IO connect payload for a credential. */
export function socketAuth(cred = credential) {
  if (!cred) return {};
  return cred.kind === "jwt" ? { token: cred.value } : { api_key: cred.value };
}

let credential = null;
const authListeners = new Set();
// Drivers and hubs paused for want of a usable credential; setCredential() wakes them.
const authWaiters = new Set();

export function getCredential() {
  return credential;
}

/**
 * Use this credential from now on (a string is parsed; null signs out). Paused watches
 * continue from their cursor; a connected Socket.IO socket is sent `refresh {token}` (or
 * reconnects, for an API key or a refused refresh); signing out cuts the open streams.
 */
export function setCredential(raw) {
  const next = parseCredential(raw);
  if (next === credential || (next && credential && next.kind === credential.kind && next.value === credential.value)) return;
  credential = next;
  for (const hub of hubs.values()) hub.credentialChanged();
  if (!next) {
    for (const d of [...sseDrivers]) d.authPause({ code: "unauthenticated", message: "signed out" });
    return;
  }
  const waiting = [...authWaiters];
  authWaiters.clear();
  for (const x of waiting) x.resumeAuth();
}

/**
 * Listen for credential trouble: fn({code, message, transport, credential}) where code is one
 * of AUTH_ERROR_CODES (the credential was refused: ask for another) or "auth_expiring" (a
 * Socket.IO server says it ends in `in_s` seconds and no newer one is set). Returns an
 * unsubscribe function.
 */
export function onAuthProblem(fn) {
  authListeners.add(fn);
  return () => authListeners.delete(fn);
}

function notifyAuth(problem) {
  for (const fn of [...authListeners]) {
    try { fn(problem); } catch (err) { console.error(err); }
  }
}

/**
 * `holder` (an SSE driver or a hub) had `used` refused. Returns true if it should wait for a
 * new credential, false if a newer one is already set and it should simply try again.
 */
function authRefused(holder, error, used, transport) {
  if (credential && credential !== used) return false;
  // The credential is dead: nothing should keep sending it.
  if (credential === used) credential = null;
  authWaiters.add(holder);
  notifyAuth({ code: error.code, message: error.message, transport, credential: used });
  return true;
}

/** The {code, message} of an error answer, whatever its body. */
async function errorOf(res) {
  let error = { code: `http_${res.status}`, message: res.statusText || `HTTP ${res.status}` };
  try {
    const body = await res.json();
    if (body && body.error) error = { ...body.error };
  } catch (_) { /* not JSON */ }
  if (res.status === 401 && !AUTH_ERROR_CODES.has(error.code)) error.code = "unauthenticated";
  return error;
}

/**
 * fetch() with the credential. A 401 answer for the current credential drops it and is
 * reported to onAuthProblem listeners (unless `report: false`, as when trying out a credential
 * that is not in use yet). `credential` overrides which one is sent.
 */
export async function authFetch(url, init = {}, { credential: cred = credential, report = true } = {}) {
  const headers = { ...(init.headers || {}), ...authHeaders(cred) };
  const res = await fetch(url, { ...init, headers });
  if (res.status === 401 && report && cred === credential) {
    const error = await errorOf(res.clone());
    if (cred) credential = null;
    notifyAuth({ code: error.code, message: error.message, transport: "http", credential: cred });
  }
  return res;
}

/**
 * A ticket for one run's event stream: resolves {ticket, expires_in} from
 * POST /runs/{id}/ticket. Rejects with an Error carrying `status` and `error` ({code, message})
 * when the server says no, or with the fetch error when it cannot be reached.
 */
export async function requestTicket(runId, { baseUrl = "", credential: cred = credential, signal } = {}) {
  const res = await fetch(`${baseUrl.replace(/\/$/, "")}/runs/${encodeURIComponent(runId)}/ticket`, {
    method: "POST", headers: authHeaders(cred), cache: "no-store", signal,
  });
  if (!res.ok) {
    const error = await errorOf(res);
    const err = new Error(error.message || error.code);
    err.status = res.status;
    err.error = error;
    throw err;
  }
  return res.json();
}

/** The events URL of a run: `ticket` and `after` (the cursor) go in the query. */
export function eventsUrl(runId, { baseUrl = "", after = null, ticket = null } = {}) {
  const p = new URLSearchParams();
  if (ticket) p.set("ticket", ticket);
  if (after !== null && after !== undefined) p.set("last_event_id", String(after));
  const q = p.toString();
  return `${baseUrl.replace(/\/$/, "")}/runs/${encodeURIComponent(runId)}/events${q ? `?${q}` : ""}`;
}

/**
 * For a plain EventSource, which cannot send headers and must not carry the credential in
 * its URL: `new EventSource(await ticketedEventsUrl(runId, {after}))`. Call it again for each
 * reconnect (the ticket is short-lived; EventSource's own retry reuses the old URL).
 */
export async function ticketedEventsUrl(runId, { baseUrl = "", after = null, credential: cred = credential } = {}) {
  const { ticket } = await requestTicket(runId, { baseUrl, credential: cred });
  return eventsUrl(runId, { baseUrl, after, ticket });
}

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
 *                               | "unauthorized" (detail {code, message}: waiting for setCredential())
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

/**
 * Read a text/event-stream body, calling onFrame(event, data, id) for each frame; onFrame
 * returning false stops the read (and cancels the body). Resolves when the body ends.
 */
export async function readFrames(body, onFrame) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let frame = { event: "message", data: [], id: null };
  const dispatch = () => {
    const f = frame;
    frame = { event: "message", data: [], id: null };
    if (!f.data.length) return true;
    return onFrame(f.event, f.data.join("\n"), f.id);
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

// A fetch()-based EventSource: the event names are the run's namespaces, an open set (user
// graphs add their own), and EventSource only delivers named events to listeners registered
// by name in advance. fetch also reads the JSON error of a 404/410 and leaves reconnection
// (with ?last_event_id=) to us, so the cursor is always our lastSeq.
//
// Each (re)connect first trades the credential for a ticket and opens the stream with the
// ticket alone, as an EventSource would have to: the credential never rides in a URL, and
// the ticket path is the one that gets exercised.
class SSEDriver {
  constructor(w) {
    this.w = w;
    this.abort = null;
    this.timer = null;
    this.attempt = 0;
    this.everOpen = false;
    this.stopped = false;
    this.waitingAuth = false;
    this.ticketRefusals = 0; // 401s on the stream itself with a fresh ticket, in a row
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
    authWaiters.delete(this);
    window.removeEventListener("offline", this.onOffline);
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  url(ticket) {
    return eventsUrl(this.w.runId, { baseUrl: this.w.baseUrl, after: this.w.cursor, ticket });
  }

  /** The credential was refused (or signed out): wait for a new one, unless one is already set. */
  authPause(error, used = credential) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
    this.abort = null;
    if (!authRefused(this, error, used, "sse")) {
      this.reconnectSoon(0);
      return;
    }
    this.waitingAuth = true;
    this.w.setConnection("unauthorized", error);
  }

  resumeAuth() {
    if (this.stopped || !this.waitingAuth) return;
    this.waitingAuth = false;
    this.attempt = 0;
    this.ticketRefusals = 0;
    this.w.setConnection("reconnecting", { reason: "signed in again" });
    this.reconnectSoon(0);
  }

  drop(reason) {
    if (this.stopped || this.waitingAuth) return;
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.w.setConnection("reconnecting", { reason });
    if (navigator.onLine !== false) this.reconnectSoon();
  }

  reconnectSoon(delay) {
    if (this.stopped || this.waitingAuth) return;
    clearTimeout(this.timer);
    if (delay === undefined) {
      delay = Math.min(250 * 2 ** this.attempt, 5000) * (0.8 + Math.random() * 0.4);
      this.attempt += 1;
    }
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /**
   * A ticket for the next connect: {ticket}, {ticket: null} when the server has no ticket
   * endpoint (an older server: open with headers instead), or null when this attempt is over
   * (what happens next is already arranged).
   */
  async ticket(cred, ctrl) {
    try {
      const t = await requestTicket(this.w.runId, { baseUrl: this.w.baseUrl, credential: cred, signal: ctrl.signal });
      if (t && typeof t.ticket === "string" && t.ticket) return { ticket: t.ticket };
      this.w.fail({ code: "bad_ticket", message: "the server answered POST /ticket without a ticket" });
      return null;
    } catch (err) {
      if (ctrl.signal.aborted || this.stopped) return null;
      const status = err.status;
      if (status === 401) {
        this.authPause(err.error, cred);
      } else if (status === 404 || status === 405) {
        // No ticket route, or no such run (then the stream's own 404 says so, as before).
        return { ticket: null };
      } else if (status === undefined || status >= 500 || status === 429) {
        this.w.setConnection("reconnecting", { reason: err.message || String(err) });
        this.reconnectSoon();
      } else {
        this.w.fail(err.error);
      }
      return null;
    }
  }

  async connect() {
    if (this.stopped || this.waitingAuth) return;
    if (this.abort) this.abort.abort();
    const ctrl = new AbortController();
    this.abort = ctrl;
    const cred = credential;
    this.streamCred = cred;
    const t = await this.ticket(cred, ctrl);
    if (!t || ctrl.signal.aborted || this.stopped) return;
    const headers = { Accept: "text/event-stream", ...(t.ticket ? {} : authHeaders(cred)) };
    let res;
    try {
      res = await fetch(this.url(t.ticket), { headers, cache: "no-store", signal: ctrl.signal });
    } catch (err) {
      if (ctrl.signal.aborted) return;
      this.w.setConnection("reconnecting", { reason: String(err && err.message || err) });
      this.reconnectSoon();
      return;
    }
    if (!res.ok) {
      const error = await errorOf(res);
      if (this.stopped || ctrl.signal.aborted) return;
      if (res.status === 401) {
        // A ticket can lapse between the POST and the GET (a slow network, a suspended tab):
        // fetch another; if the stream keeps refusing fresh tickets, it is the credential.
        this.ticketRefusals += 1;
        if (t.ticket && this.ticketRefusals < 3) {
          this.w.setConnection("reconnecting", { reason: error.message });
          this.reconnectSoon();
        } else {
          this.authPause(error, cred);
        }
      } else if (res.status === 410 && error.code === "cursor_expired") {
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
    this.ticketRefusals = 0;
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
    await readFrames(body, (name, data) => this.onFrame(name, data, ctrl));
  }

  /** Returns false to stop reading this stream. */
  onFrame(name, data, ctrl) {
    let payload;
    try {
      payload = JSON.parse(data);
    } catch (_) {
      payload = null;
    }
    if (name === "auth_expired" || name === "auth_revoked") {
      const p = payload && typeof payload === "object" ? payload : {};
      ctrl.abort();
      if (name === "auth_revoked") {
        this.authPause({ code: p.code || "revoked", message: p.message || "the credential was revoked" }, this.streamCred);
      } else {
        // The stream outlived its credential's exp. A fresh ticket continues it if the
        // credential is still good (the ticket expired, not the token); if not, the ticket
        // request is refused and the watch waits for a sign-in.
        this.w.setConnection("reconnecting", { reason: p.message || "the credential expired" });
        this.reconnectSoon(0);
      }
      return false;
    }
    if (payload === null) return true;
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

// ---------------------------------------------------------------- delivery contexts

/**
 * Watch a delivery context (issue 13): GET /contexts/{key}/events. Every connection starts
 * with INBOX {key, entries} (the results that finished while nobody watched), then the
 * context's own events - RUN_STARTED, VERDICT, VERSION, RESULT - each with the context
 * log's seq; a dropped stream comes back with ?last_event_id= (no gap, no duplicate).
 *
 *   const c = watchContext(key, { onInbox, onEvent, onState });
 *   c.resume();  // after a sign-in, or once an unknown context exists
 *   c.close();
 *
 * onState(state, detail): connecting | live | reconnecting | unknown (404: no such context
 * yet) | unauthorized (paused until resume()) | error.
 *
 * Credentials: tickets open one run's stream only (POST /runs/{id}/ticket), there is none
 * for a context, so the stream opens with the credential in its Authorization / X-Api-Key
 * header - fetch() can send headers where a plain EventSource cannot - and never in the URL.
 */
export function watchContext(key, o = {}) {
  const c = new ContextStream(key, o);
  c.start();
  return c;
}

class ContextStream {
  constructor(key, o) {
    this.key = key;
    this.baseUrl = (o.baseUrl || "").replace(/\/$/, "");
    this.cursor = null; // the context log's last seq we showed
    this.stopped = false;
    this.paused = false;
    this.everOpen = false;
    this.attempt = 0;
    this.timer = null;
    this.abort = null;
    this.state = "idle";
    this.stats = { events: 0, connects: 0, dropped: 0 };
    this.cb = { onInbox: o.onInbox || noop, onEvent: o.onEvent || noop, onState: o.onState || noop };
    this.onOffline = () => this.drop("browser offline");
    this.onOnline = () => this.reconnectSoon(0);
  }

  start() {
    window.addEventListener("offline", this.onOffline);
    window.addEventListener("online", this.onOnline);
    this.connect();
  }

  close() {
    this.stopped = true;
    window.removeEventListener("offline", this.onOffline);
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  /** Try again now (a new credential, or the context was just created). */
  resume() {
    if (this.stopped) return;
    this.paused = false;
    this.attempt = 0;
    this.reconnectSoon(0);
  }

  setState(state, detail = {}) {
    if (this.stopped) return;
    this.state = state;
    this.cb.onState(state, { key: this.key, cursor: this.cursor, ...detail });
  }

  pause(state, detail) {
    this.paused = true;
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.setState(state, detail);
  }

  drop(reason) {
    if (this.stopped || this.paused) return;
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.setState("reconnecting", { reason });
    if (navigator.onLine !== false) this.reconnectSoon();
  }

  reconnectSoon(delay) {
    if (this.stopped || this.paused) return;
    clearTimeout(this.timer);
    if (delay === undefined) {
      delay = Math.min(300 * 2 ** this.attempt, 8000) * (0.8 + Math.random() * 0.4);
      this.attempt += 1;
    }
    this.timer = setTimeout(() => this.connect(), delay);
  }

  url() {
    const u = `${this.baseUrl}/contexts/${encodeURIComponent(this.key)}/events`;
    return this.cursor === null ? u : `${u}?last_event_id=${this.cursor}`;
  }

  async connect() {
    if (this.stopped || this.paused) return;
    if (this.abort) this.abort.abort();
    const ctrl = new AbortController();
    this.abort = ctrl;
    this.setState(this.everOpen ? "reconnecting" : "connecting");
    let res;
    try {
      res = await fetch(this.url(), {
        headers: { Accept: "text/event-stream", ...authHeaders(credential) }, cache: "no-store", signal: ctrl.signal,
      });
    } catch (err) {
      if (ctrl.signal.aborted || this.stopped) return;
      this.setState("reconnecting", { reason: String((err && err.message) || err) });
      this.reconnectSoon();
      return;
    }
    if (!res.ok) {
      const error = await errorOf(res);
      if (ctrl.signal.aborted || this.stopped) return;
      if (res.status === 401 || res.status === 403) this.pause("unauthorized", error);
      else if (res.status === 404) this.pause("unknown", error);
      else if (res.status === 410) { this.cursor = null; this.reconnectSoon(0); }
      else if (res.status >= 500 || res.status === 429) {
        this.setState("reconnecting", { reason: error.message });
        this.reconnectSoon();
      } else this.pause("error", error);
      return;
    }
    this.attempt = 0;
    this.stats.connects += 1;
    const again = this.everOpen;
    this.everOpen = true;
    this.setState("live", { resynced: again });
    try {
      await readFrames(res.body, (name, data) => this.onFrame(name, data, ctrl));
    } catch (err) {
      if (ctrl.signal.aborted || this.stopped || this.paused) return;
      this.setState("reconnecting", { reason: String((err && err.message) || err) });
      this.reconnectSoon();
      return;
    }
    if (ctrl.signal.aborted || this.stopped || this.paused) return;
    this.setState("reconnecting", { reason: "stream closed by the server" });
    this.reconnectSoon();
  }

  onFrame(name, data, ctrl) {
    let payload = null;
    try { payload = JSON.parse(data); } catch (_) { /* not JSON */ }
    if (name === "auth_expired" || name === "auth_revoked") {
      const p = payload && typeof payload === "object" ? payload : {};
      this.pause("unauthorized", { code: p.code || (name === "auth_revoked" ? "revoked" : "token_expired"), message: p.message });
      return false;
    }
    if (name === "reset") {
      // Our cursor fell behind the context's log: start over (INBOX comes first again).
      this.cursor = null;
      ctrl.abort();
      this.reconnectSoon(0);
      return false;
    }
    if (!payload || typeof payload !== "object") return true;
    if (name === "INBOX") {
      this.cb.onInbox(payload);
      return true;
    }
    if (!Number.isInteger(payload.seq)) return true;
    if (this.cursor !== null && payload.seq <= this.cursor) {
      this.stats.dropped += 1;
      return true;
    }
    if (this.cursor !== null && payload.seq !== this.cursor + 1) {
      // A hole: ask again from our cursor.
      ctrl.abort();
      this.setState("reconnecting", { reason: `missing context events after #${this.cursor}` });
      this.reconnectSoon(0);
      return false;
    }
    this.cursor = payload.seq;
    this.stats.events += 1;
    this.cb.onEvent(payload);
    return true;
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
    const res = await authFetch(`${baseUrl}/socket.io/?EIO=4&transport=probe`, { cache: "no-store" }, { report: false });
    if (res.status === 404) return { ok: false, error: "this server has no Socket.IO endpoint (/socket.io/)" };
    return { ok: true };
  } catch (err) {
    return { ok: false, error: `the Socket.IO endpoint is unreachable: ${err && err.message || err}` };
  }
}

const hubs = new Map(); // baseUrl -> Hub: one socket per server, many runs per socket

/** The auth payload's `code` from a connect_error, if the server refused our credential. */
function connectAuthError(err) {
  const data = err && err.data;
  const e = data && typeof data === "object" ? (data.error && typeof data.error === "object" ? data.error : data) : null;
  if (e && AUTH_ERROR_CODES.has(e.code)) return { code: e.code, message: e.message || err.message };
  return null;
}

class Hub {
  constructor(io, baseUrl) {
    this.watches = new Map(); // runId -> SocketIODriver
    this.offline = false;
    this.everConnected = false;
    this.authBlocked = null; // {code, message} while waiting for a usable credential
    this.tried = null; // the credential of the connect attempt under way
    this.authedWith = null; // the credential the connected socket was accepted with
    this.socket = io(baseUrl || undefined, {
      path: "/socket.io/",
      // A function, so every (re)connect presents the credential current at that moment.
      auth: (cb) => {
        this.tried = credential;
        cb(socketAuth(credential));
      },
      transports: ["websocket", "polling"],
      tryAllTransports: true,
      reconnectionDelay: 300,
      reconnectionDelayMax: 3000,
      randomizationFactor: 0.3,
      timeout: 8000,
    });
    const s = this.socket;
    s.on("connect", () => {
      this.authedWith = this.tried;
      this.connectErrors = 0;
      const again = this.everConnected;
      this.everConnected = true;
      for (const d of this.watches.values()) d.subscribe(again);
    });
    s.on("disconnect", (reason) => {
      for (const d of this.watches.values()) d.lost(reason);
      // The server kicked us: come back (unless it was over our credential).
      if (reason === "io server disconnect" && !this.offline && !this.authBlocked) s.connect();
    });
    this.connectErrors = 0;
    s.on("connect_error", (err) => {
      const authError = connectAuthError(err);
      if (authError) {
        // Not a reason to give up on Socket.IO for SSE: any transport would be refused.
        this.authFailed(authError, this.tried);
        return;
      }
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
    s.on("auth_expiring", (msg) => {
      const cred = credential;
      if (cred && cred !== this.authedWith && cred.kind === "jwt") {
        this.refresh(cred);
        return;
      }
      const info = msg && typeof msg === "object" ? msg : {};
      notifyAuth({ code: "auth_expiring", message: "the credential is about to expire", transport: "socketio",
        credential: this.authedWith, expires_at: info.expires_at, in_s: info.in_s });
    });
    // The server disconnects right after these; a newer credential (if any) is used by the
    // reconnect, otherwise the watches wait for one.
    s.on("auth_expired", (msg) => this.authEnded(msg, "token_expired", "the credential expired"));
    s.on("auth_revoked", (msg) => this.authEnded(msg, "revoked", "the credential was revoked"));
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
      if (!this.authBlocked) s.connect();
    });
  }

  add(driver) {
    this.watches.set(driver.w.runId, driver);
    if (this.authBlocked) driver.unauthorized(this.authBlocked);
    else if (this.socket.connected) driver.subscribe(false);
    else if (!this.socket.active && !this.offline) this.socket.connect();
  }

  authEnded(msg, code, message) {
    const m = msg && typeof msg === "object" ? msg : {};
    this.authFailed({ code: m.code || code, message: m.message || message }, this.authedWith);
  }

  /** `used` was refused: wait for a new credential (or try the newer one already set). */
  authFailed(error, used) {
    if (!authRefused(this, error, used, "socketio")) {
      this.reconnect();
      return;
    }
    this.authBlocked = error;
    // Stop the manager's retries: each would present the same refused credential.
    if (this.socket.connected || this.socket.active) this.socket.disconnect();
    for (const d of this.watches.values()) d.unauthorized(error);
  }

  resumeAuth() {
    if (!this.authBlocked) return;
    this.authBlocked = null;
    if (!this.offline) this.socket.connect();
  }

  reconnect() {
    // disconnect() then connect(): the watches see a drop and resubscribe from their cursors.
    this.socket.disconnect();
    if (!this.offline) this.socket.connect();
  }

  /** setCredential() changed the credential (a paused hub is woken through authWaiters). */
  credentialChanged() {
    if (this.authBlocked) return;
    const cred = credential;
    if (!cred) {
      // Signed out: the open socket must not go on streaming on the old credential.
      authWaiters.add(this);
      this.authBlocked = { code: "unauthenticated", message: "signed out" };
      if (this.socket.connected || this.socket.active) this.socket.disconnect();
      for (const d of this.watches.values()) d.unauthorized(this.authBlocked);
      return;
    }
    if (!this.socket.connected) return; // the next connect attempt presents it
    if (cred.kind === "jwt" && this.authedWith && this.authedWith.kind === "jwt") this.refresh(cred);
    else this.reconnect();
  }

  /** Hand a newer token to the connected socket; if the server refuses it, reconnect with it. */
  async refresh(cred) {
    let ack;
    try {
      ack = await this.socket.timeout(10000).emitWithAck("refresh", { token: cred.value });
    } catch (_) {
      ack = null;
    }
    if (credential !== cred) return; // overtaken by another setCredential()
    if (ack && ack.ok === true) {
      this.authedWith = cred;
      this.refreshes = (this.refreshes || 0) + 1;
      return;
    }
    // Another tenant or subject, or a server without refresh: a new connection settles it.
    if (this.socket.connected) this.reconnect();
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

  unauthorized(error) {
    if (this.stopped) return;
    this.subscribed = false;
    this.token += 1;
    this.w.setConnection("unauthorized", error);
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
      if (AUTH_ERROR_CODES.has(error.code)) {
        this.hub.authFailed(error, this.hub.authedWith);
        return;
      }
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

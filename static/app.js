// The thoughtstream viewer: start runs, list them, watch one live.
// Plain ES module; the stream logic (resync, dedup, rewind) lives in client.js.

import {
  watchRun, watchContext, probeSocketIO, TERMINAL_STATES, authFetch, setCredential, getCredential, parseCredential,
  onAuthProblem,
} from "./client.js";

// ---------------------------------------------------------------- small helpers

const $ = (sel, root = document) => root.querySelector(sel);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** replaceChildren without the "null" text it makes of a skipped (null / false) child. */
function fillWith(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function svg(path, cls = "ico") {
  const s = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  s.setAttribute("viewBox", "0 0 20 20");
  s.setAttribute("aria-hidden", "true");
  s.setAttribute("class", cls);
  s.innerHTML = path;
  return s;
}

const ICONS = {
  thought: '<path d="M4 9.5a6 5 0 1 1 3.2 4.4L4 15.5l.9-3A5 5 0 0 1 4 9.5z"/>',
  tool: '<path d="M12.5 3.5a4 4 0 0 0-3.8 5.2L3.5 14a1.6 1.6 0 0 0 2.3 2.3l5.3-5.2a4 4 0 0 0 5.2-3.8l-2.4 2.4-2.3-.5-.5-2.3z"/>',
  critic: '<path d="M10 3l2 4.3 4.6.6-3.4 3.2.9 4.6L10 13.5l-4.1 2.2.9-4.6-3.4-3.2 4.6-.6z"/>',
  custom: '<path d="M7 4H5.5A1.5 1.5 0 0 0 4 5.5v3L2.5 10 4 11.5v3A1.5 1.5 0 0 0 5.5 16H7M13 4h1.5A1.5 1.5 0 0 1 16 5.5v3l1.5 1.5-1.5 1.5v3a1.5 1.5 0 0 1-1.5 1.5H13"/>',
  check: '<path d="M4.5 10.5l3.5 3.5 7.5-8"/>',
  cross: '<path d="M5.5 5.5l9 9M14.5 5.5l-9 9"/>',
  resume: '<path d="M4.5 10a5.5 5.5 0 1 0 1.6-3.9"/><path d="M4 3.5V7h3.5"/>',
  stop: '<rect x="5" y="5" width="10" height="10" rx="2"/>',
  copy: '<rect x="7" y="7" width="9" height="9" rx="2"/><path d="M13 4.5H5.5a1 1 0 0 0-1 1V13"/>',
  doc: '<path d="M6 3h5.5L15 6.5V16a1 1 0 0 1-1 1H6a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1z"/><path d="M11 3v4h4M7.5 10.5h5M7.5 13.5h5"/>',
  pause: '<rect x="5.5" y="4.5" width="3" height="11" rx="1"/><rect x="11.5" y="4.5" width="3" height="11" rx="1"/>',
  edit: '<path d="M4 16l1-4 8.5-8.5a1.4 1.4 0 0 1 2 0l1 1a1.4 1.4 0 0 1 0 2L8 15z"/><path d="M12 5l3 3"/>',
  inbox: '<path d="M3.5 11l2-6.5h9l2 6.5v4a1 1 0 0 1-1 1h-11a1 1 0 0 1-1-1z"/><path d="M3.5 11h4l1 2h3l1-2h4"/>',
};

async function api(method, path, body) {
  const res = await authFetch(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* empty */ }
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.detail = (data && data.error) || {};
    throw err;
  }
  return data;
}

const NUM = new Intl.NumberFormat("en-US");
function fmtNum(n) {
  return NUM.format(n);
}

function fmtDuration(s) {
  if (!Number.isFinite(s) || s < 0) return "—";
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function fmtAgo(ts) {
  const d = Date.now() / 1000 - ts;
  if (d < 5) return "just now";
  if (d < 60) return `${Math.round(d)} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return new Date(ts * 1000).toLocaleDateString();
}

function inputSummary(input, max = 280) {
  if (!input || typeof input !== "object") return "";
  let s = "";
  for (const v of Object.values(input)) if (typeof v === "string" && v.trim()) { s = v.trim(); break; }
  if (!s) s = JSON.stringify(input);
  if (s === "{}") return "";
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Long values are shown shortened; the run record and the log keep them whole. */
function clip(s, max = 1200) {
  return s.length > max ? `${s.slice(0, max)}… (${fmtNum(s.length - max)} more characters)` : s;
}

function prettyJSON(v) {
  try { return JSON.stringify(v, null, 2); } catch (_) { return String(v); }
}

function toast(msg) {
  const t = $("#toast");
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

// Colours of unknown namespaces: stable per name.
const CUSTOM_HUES = [200, 330, 30, 160, 260, 90];
function hueOf(name) {
  let x = 0;
  for (const c of name) x = (x * 31 + c.charCodeAt(0)) >>> 0;
  return CUSTOM_HUES[x % CUSTOM_HUES.length];
}

// ---------------------------------------------------------------- state

const KNOWN_LANES = {
  THOUGHT: { title: "Thoughts", icon: "thought", cls: "lane-thought" },
  TOOL_USE: { title: "Tool use", icon: "tool", cls: "lane-tool" },
  CRITIC_EVAL: { title: "Critic", icon: "critic", cls: "lane-critic" },
};
const META_NS = new Set(["STATUS", "STEP", "RESULT", "RESULT_HELD", "ERROR"]);
const MAX_LANE_ITEMS = 250; // DOM items per lane; text keeps flowing into its blocks regardless

const state = {
  agents: [],
  transport: null,
  socketio: { ok: null, error: null },
  runId: null,
  view: null,
  watch: null,
  runsKey: "",
  connLog: [],
  // who: GET /whoami's answer for the credential in use (via "none": no sign-in needed);
  // signIn: why the sign-in box is open ({code, message, soft}), null when it is closed.
  auth: { who: null, signIn: null, problems: [] },
  agentsLoaded: false,
  // The delivery context the page works on (the form's "context" key): its view
  // (GET /contexts/{key}; null while unknown), its inbox and its live stream.
  ctx: null,
};
window.__ts = state; // for the browser tests and for curious people in DevTools

// ---------------------------------------------------------------- connection indicator

const CONN_LABEL = {
  idle: "Not watching",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  resynced: "Resynced",
  ended: "Complete",
  error: "Disconnected",
  unauthorized: "Sign in to continue",
};
let resyncTimer = null;

function setConn(s, detail = {}) {
  const el = $("#conn");
  state.connLog.push({ state: s, at: Date.now(), ...detail });
  clearTimeout(resyncTimer);
  el.dataset.state = s;
  let label = CONN_LABEL[s] || s;
  const tname = detail.transport === "sse" ? "SSE" : detail.transport === "socketio" ? "Socket.IO" : "";
  if ((s === "live" || s === "resynced" || s === "ended") && tname) label += ` · ${tname}`;
  if (s === "resynced" && detail.after !== undefined && detail.after !== null) label = `Resynced from #${detail.after} · ${tname}`;
  $(".conn-label", el).textContent = label;
  el.title = detail.reason ? `${label} — ${detail.reason}` : label;
  if (s === "resynced") {
    // Show "resynced" a moment, then settle back to live.
    resyncTimer = setTimeout(() => {
      if (el.dataset.state === "resynced") {
        el.dataset.state = "live";
        $(".conn-label", el).textContent = `Live · ${tname}`;
      }
    }, 4000);
  }
}

// ---------------------------------------------------------------- results

const GATE_TITLES = {
  stale: "The document changed while this ran",
  superseded: "A newer run replaced this one",
  expired: "This result came too late",
};

/** A run's output as DOM nodes: {nodes, kind} ("answer" for a text answer, else "result"). */
function outputNodes(out, testid) {
  if (out && typeof out === "object" && typeof out.answer === "string") {
    const nodes = [h("p", { class: "answer-text", "data-testid": testid }, out.answer)];
    const meta = h("div", { class: "answer-meta" });
    for (const [k, v] of Object.entries(out)) {
      if (k === "answer") continue;
      let shown = typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : typeof v === "object" ? JSON.stringify(v) : String(v);
      if (shown.length > 60) shown = shown.slice(0, 57) + "…";
      meta.append(h("span", { class: "chip" }, h("b", {}, k), " ", shown));
    }
    if (meta.childElementCount) nodes.push(meta);
    return { nodes, kind: "answer" };
  }
  if (typeof out === "string") return { nodes: [h("p", { class: "answer-text", "data-testid": testid }, out)], kind: "answer" };
  if (out && typeof out === "object" && !Array.isArray(out)) {
    const dl = h("dl", { class: "kv", "data-testid": testid });
    for (const [k, v] of Object.entries(out)) {
      dl.append(h("dt", {}, k), h("dd", {}, typeof v === "string" ? clip(v) : h("code", {}, clip(JSON.stringify(v)))));
    }
    return { nodes: [dl], kind: "result" };
  }
  return { nodes: [h("pre", { class: "json answer-json", "data-testid": testid }, clip(prettyJSON(out), 4000))], kind: "result" };
}

// ---------------------------------------------------------------- the run view

class RunView {
  constructor(runId) {
    this.runId = runId;
    this.root = h("article", { class: "run", "data-run-id": runId });
    this.build();
    this.resetModel();
    this.tick = setInterval(() => this.renderClock(), 250);
  }

  destroy() {
    clearInterval(this.tick);
    this.root.remove();
  }

  resetModel() {
    this.status = "queued";
    this.attempt = 1;
    this.startTs = null;
    this.endTs = null;
    this.lastTs = null;
    this.lastLocal = null;
    this.events = 0;
    this.lastSeq = 0;
    this.chunks = 0;
    this.firstTextTs = null;
    this.lastTextTs = null;
    this.steps = [];
    this.lastStepNo = null; // the step number of the last STEP boundary
    this.pendingNext = []; // the nodes that boundary said run next
    this.activeNode = null;
    this.lanes = new Map();
    this.thought = null; // the THOUGHT block being written
    this.firstThoughtAgent = null;
    this.blockCount = new Map();
    this.criticPending = null;
    this.tools = new Map();
    this.result = null;
    this.lastLaneNs = null;
    this.lanesEl.replaceChildren();
    delete this.lanesEl.dataset.count;
    this.progressEl.replaceChildren();
    this.askEl.hidden = true;
    this.askEl.replaceChildren();
    this.answerEl.hidden = true;
    this.answerEl.replaceChildren();
    this.noticesEl.replaceChildren();
    this.attemptChip.hidden = true;
    // The delivery gate: the verdict shown, whether the result is held, and its delivery.
    this.verdict = null;
    this.held = false;
    this.delivered = null;
    this.gateEl.hidden = true;
    this.gateEl.replaceChildren();
    this.badgeEl.hidden = true;
    this.renderHead();
  }

  build() {
    this.statusEl = h("span", { class: "status", "data-status": "queued", "data-testid": "run-status" }, "queued");
    this.attemptChip = h("span", { class: "chip chip-resumed", hidden: true });
    this.cancelBtn = h("button", { type: "button", class: "btn btn-ghost btn-danger", "data-testid": "cancel" },
      svg(ICONS.stop), "Cancel");
    this.cancelBtn.addEventListener("click", () => this.cancel());
    this.idEl = h("button", { type: "button", class: "run-id", title: "Copy run id" }, svg(ICONS.copy), this.runId.slice(0, 12));
    this.idEl.addEventListener("click", () => {
      navigator.clipboard && navigator.clipboard.writeText(this.runId).then(() => toast("Run id copied"), () => {});
    });
    this.agentEl = h("span", { class: "agent-tag" }, "…");
    this.ctxChip = h("span", { class: "chip chip-ctx", hidden: true, "data-testid": "run-context" });
    this.badgeEl = h("span", { class: "gate-badge", hidden: true, "data-testid": "gate-badge" });
    this.titleEl = h("h1", { class: "run-title" }, "");
    this.metric = {};
    const metric = (key, label) => {
      const v = h("span", { class: "metric-value", "data-metric": key }, "—");
      this.metric[key] = v;
      return h("div", { class: "metric" }, v, h("span", { class: "metric-label" }, label));
    };
    this.progressEl = h("ol", { class: "steps", "aria-label": "Steps" });
    this.progressBar = h("div", { class: "progress" }, h("span"));
    const head = h("header", { class: "run-head" },
      h("div", { class: "run-row" },
        h("div", { class: "run-ident" }, this.agentEl, this.idEl, this.ctxChip),
        h("div", { class: "run-actions" }, this.attemptChip, this.badgeEl, this.statusEl, this.cancelBtn)),
      this.titleEl,
      h("div", { class: "metrics" },
        metric("steps", "steps"), metric("events", "events"), metric("chunks", "chunks"),
        metric("rate", "tokens / s"), metric("elapsed", "elapsed")),
      this.progressBar,
      this.progressEl);
    this.noticesEl = h("div", { class: "notices" });
    this.askEl = h("section", { class: "ask", hidden: true, "data-testid": "interrupt" });
    this.answerEl = h("section", { class: "answer", hidden: true, "data-testid": "answer" });
    this.gateEl = h("section", { class: "gate", hidden: true, "data-testid": "gate", "aria-live": "polite" });
    this.lanesEl = h("div", { class: "lanes" });
    this.root.append(head, this.noticesEl, this.askEl, this.gateEl, this.answerEl, this.lanesEl);
  }

  setRecord(run) {
    if (!run) return;
    this.agentEl.textContent = run.agent;
    const summary = inputSummary(run.input);
    this.titleEl.textContent = summary || `Run ${run.run_id}`;
    this.titleEl.title = summary;
    if (this.events === 0 && run.status) this.setStatus(run.status);
    this.record = run;
    const ctx = run.context;
    this.ctxChip.hidden = !ctx;
    if (ctx) {
      fillWith(this.ctxChip, svg(ICONS.doc), h("b", {}, ctx.key), ` @ ${ctx.version}`,
        ctx.on_stale === "hold" ? h("span", { class: "ctx-hold" }, " · hold") : null);
      this.ctxChip.title = `answers ${ctx.key} at version ${ctx.version}; if it moves: ${ctx.on_stale === "hold" ? "hold the result" : "mark it"}`;
    }
    this.applyRecordGate();
  }

  /** What the record says of the gate, for what the events have not shown (yet). */
  applyRecordGate() {
    const run = this.record;
    if (!run || !run.verdict) return;
    const delivery = run.delivery || {};
    if (run.status === "succeeded" && delivery.held && !this.held) this.showHeld(run.verdict);
    else if (!this.verdict) this.setBadge(run.verdict);
    if (this.held && delivery.delivered_at && !this.delivered) {
      this.showDelivered({ output: run.result, verdict: run.verdict, delivered_at: delivery.delivered_at });
    }
  }

  // -------------------------------------------------- applying events

  rebuild(events) {
    this.resetModel();
    for (const ev of events) this.apply(ev, true);
    this.applyRecordGate();
    this.renderHead();
    for (const lane of this.lanes.values()) lane.follow = true;
    this.scrollLanes(true);
  }

  apply(ev, quiet = false) {
    this.events += 1;
    this.lastSeq = ev.seq;
    this.lastTs = ev.ts;
    this.lastLocal = Date.now() / 1000;
    if (!META_NS.has(ev.ns)) this.lastLaneNs = ev.ns; // the lane that glows as "live"
    switch (ev.ns) {
      case "STATUS": this.onStatus(ev); break;
      case "STEP": this.onStep(ev); break;
      case "RESULT": this.onResult(ev); break;
      case "RESULT_HELD": this.showHeld(ev.data.verdict); break;
      case "ERROR": this.onError(ev); break;
      case "THOUGHT": this.onThought(ev); break;
      case "TOOL_USE": this.onTool(ev); break;
      case "CRITIC_EVAL": this.onCritic(ev); break;
      default: this.onCustom(ev);
    }
    if (!quiet) this.scheduleRender();
  }

  /** Header, glow and scroll at most once a frame, however many events arrived. */
  scheduleRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.renderHead();
      this.scrollLanes();
    });
  }

  onStatus(ev) {
    const s = ev.data.state;
    if (s === "running") {
      if (this.startTs === null) this.startTs = ev.ts;
      if (ev.data.attempt) this.attempt = ev.data.attempt;
    }
    if (s === "resumed") {
      this.attempt = ev.data.attempt || this.attempt + 1;
      this.attemptChip.hidden = false;
      this.attemptChip.replaceChildren(svg(ICONS.resume), `resumed · attempt ${this.attempt}`);
      this.closeThought();
      // The marker goes where the stream continues: after what was kept.
      const marker = h("div", { class: "resumed-marker", "data-testid": "resumed-marker" },
        svg(ICONS.resume), h("span", {}, `resumed (attempt ${this.attempt})`),
        h("small", {}, `continuing after event #${ev.data.rewind_to}`));
      for (const lane of this.lanes.values()) lane.body.append(marker.cloneNode(true));
      if (!this.lanes.size) this.noticesEl.append(marker);
      this.setStatus("running");
      return;
    }
    if (s === "interrupted") {
      this.closeThought();
      this.showInterrupt(ev.data.interrupts || []);
    } else {
      this.askEl.hidden = true;
    }
    if (TERMINAL_STATES.has(s)) {
      this.endTs = ev.ts;
      this.closeThought();
      if (s !== "succeeded" && ev.data.error && !this.noticesEl.querySelector(".notice-error")) {
        if (s === "cancelled") this.notice("muted", "Cancelled —", ev.data.error.message || "the run was stopped");
        else this.notice("error", "Failed —", ev.data.error.message || ev.data.error.code);
      }
      for (const card of this.tools.values()) {
        if (card.dataset.state === "running") card.dataset.state = "abandoned";
      }
      // Every run with a context ends with one verdict (failed and cancelled ones too).
      const verdict = ev.data.verdict;
      if (verdict && ev.data.held && !this.held) this.showHeld(verdict);
      else if (verdict && !this.verdict) this.setBadge(verdict);
    }
    this.setStatus(s);
  }

  setStatus(s) {
    this.status = s;
    this.statusEl.dataset.status = s;
    this.statusEl.textContent = s;
    this.root.dataset.status = s;
    this.cancelBtn.hidden = TERMINAL_STATES.has(s);
    if (TERMINAL_STATES.has(s)) this.activeNode = null;
  }

  // Human in the loop: the run waits for an answer (POST /runs/{id}/resume {value}).
  showInterrupt(interrupts) {
    const first = interrupts[0];
    const q = first && typeof first === "object" ? first : { question: first };
    const el = this.askEl;
    el.hidden = false;
    const error = h("p", { class: "form-error", hidden: true });
    const send = async (value, btn) => {
      for (const b of el.querySelectorAll("button")) b.disabled = true;
      if (btn) btn.classList.add("busy");
      try {
        await api("POST", `/runs/${encodeURIComponent(this.runId)}/resume`, { value });
        el.classList.add("sent");
      } catch (err) {
        error.hidden = false;
        error.textContent = err.message;
        for (const b of el.querySelectorAll("button")) b.disabled = false;
      }
    };
    const input = h("input", { type: "text", class: "ask-input", placeholder: "Type an answer…", "aria-label": "Answer" });
    const form = h("form", { class: "ask-form" }, input,
      h("button", { type: "submit", class: "btn btn-ghost" }, "Send"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const raw = input.value.trim();
      if (!raw) return;
      let value = raw;
      try { value = JSON.parse(raw); } catch (_) { /* plain text */ }
      send(value, null);
    });
    const answers = Array.isArray(q.answers) ? q.answers : [];
    fillWith(el,
      h("div", { class: "ask-label" }, "Waiting for you"),
      h("p", { class: "ask-question" }, typeof q.question === "string" ? q.question : prettyJSON(q)),
      answers.length
        ? h("div", { class: "ask-answers" }, ...answers.map((a, i) => {
            const b = h("button", { type: "button", class: i === 0 ? "btn btn-primary btn-inline" : "btn btn-ghost" }, String(a));
            b.addEventListener("click", () => send(a, b));
            return b;
          }))
        : null,
      form, error);
  }

  onStep(ev) {
    // A step boundary: {step, completed, next} (checkpoint steps) or {step, nodes, keys}.
    // Without "completed", the nodes that just finished are the previous boundary's "next"
    // (a boundary repeated with the same step number, as after a resume, completes nothing).
    const d = ev.data || {};
    const names = (list) => (Array.isArray(list) ? list : []).filter((n) => typeof n === "string" && !n.startsWith("__"));
    const advanced = !Number.isFinite(d.step) || this.lastStepNo === null || d.step > this.lastStepNo;
    const nodes = Array.isArray(d.completed) ? names(d.completed)
      : Array.isArray(d.nodes) ? names(d.nodes)
      : advanced ? this.pendingNext : [];
    const next = names(d.next);
    if (Number.isFinite(d.step)) this.lastStepNo = d.step;
    this.pendingNext = next;
    this.activeNode = next.length ? next.join(" + ") : null;
    if (this.thought && nodes.includes(this.thought.agent)) this.closeThought();
    if (this.criticPending && nodes.includes(this.criticPending.agent)) this.criticPending.el.classList.remove("streaming");
    if (!nodes.length) return; // the input checkpoint and the like: nothing completed
    this.steps.push({ step: d.step, nodes });
    const n = this.steps.length;
    const li = h("li", { class: "step done", title: `step ${n}: ${nodes.join(", ")}` },
      h("span", { class: "step-n" }, String(n)), nodes.join(" + "));
    this.progressEl.append(li);
  }

  onResult(ev) {
    const d = ev.data || {};
    this.result = d.output;
    const verdict = d.verdict || null;
    if (d.delivered_anyway) {
      this.showDelivered(d);
      return;
    }
    if (verdict) this.setBadge(verdict);
    if (verdict && verdict.state !== "fresh") {
      // on_stale "mark": the result came, but it is not the answer any more.
      this.showGate(verdict, { output: d.output });
      return;
    }
    this.renderAnswer(d.output, { verdict });
  }

  /** The answer box: the output, with a "fresh" badge or marked "delivered anyway". */
  renderAnswer(out, { verdict = null, delivered = false } = {}) {
    const el = this.answerEl;
    el.hidden = false;
    const { nodes, kind } = outputNodes(out, "answer-text");
    const label = h("div", { class: "answer-label" }, svg(ICONS.check), kind === "answer" ? "Answer" : "Result");
    if (delivered) {
      label.append(h("span", { class: "gate-mini", "data-state": verdict ? verdict.state : "stale", "data-testid": "delivered-anyway",
        title: verdict ? `${verdict.state}: ${verdict.reason}` : "" }, "delivered anyway"));
    } else if (verdict && verdict.state === "fresh") {
      label.append(h("span", { class: "gate-mini", "data-state": "fresh", "data-testid": "fresh-badge", title: verdict.reason }, "fresh"));
    }
    el.dataset.delivered = String(!!delivered);
    el.replaceChildren(label, ...nodes);
  }

  // -------------------------------------------------- the delivery gate

  setBadge(verdict) {
    if (!verdict || typeof verdict !== "object") return;
    this.verdict = verdict;
    const b = this.badgeEl;
    b.hidden = false;
    b.dataset.state = verdict.state;
    b.title = verdict.reason || verdict.state;
    fillWith(b, h("span", { class: "gate-dot", "aria-hidden": "true" }), verdict.state,
      this.delivered ? h("span", { class: "gate-badge-extra" }, " · delivered anyway")
        : this.held ? h("span", { class: "gate-badge-extra" }, " · held") : null);
  }

  /** A held result (RESULT_HELD): the verdict, and "Apply anyway" to release it. */
  showHeld(verdict) {
    if (!verdict) return;
    this.held = true;
    if (this.delivered) {
      this.setBadge(verdict);
      return;
    }
    this.showGate(verdict, {});
  }

  /** A non-fresh verdict instead of the answer: its state, reason and both versions. */
  showGate(verdict, { output } = {}) {
    this.setBadge(verdict);
    const el = this.gateEl;
    const st = verdict.state;
    el.hidden = false;
    el.dataset.state = st;
    el.dataset.held = String(this.held);
    const title = GATE_TITLES[st] || `Verdict: ${st}`;
    const versions = h("p", { class: "gate-versions", "data-testid": "gate-versions" },
      "Ran on ", h("code", { "data-testid": "gate-version" }, String(verdict.version ?? "—")),
      " of ", h("b", {}, String(verdict.key ?? "the document")),
      " · it is now at ", h("code", { "data-testid": "gate-current-version" }, String(verdict.current_version ?? "—")));
    if (st === "superseded" && verdict.superseded_by) {
      versions.append(" · replaced by ", h("a", { href: `#run=${verdict.superseded_by}`, class: "gate-link" },
        `run ${String(verdict.superseded_by).slice(0, 12)}`));
    }
    const parts = [
      h("div", { class: "gate-head" },
        h("span", { class: "gate-icon" }, svg(this.held && !this.delivered ? ICONS.pause : ICONS.doc)),
        h("strong", { class: "gate-title" }, title),
        h("span", { class: "gate-mini", "data-state": st, "data-testid": "gate-state" }, st)),
      h("p", { class: "gate-reason", "data-testid": "gate-reason" }, verdict.reason || ""),
      versions,
    ];
    if (this.delivered) {
      parts.push(h("p", { class: "gate-note", "data-testid": "gate-delivered" }, svg(ICONS.check),
        `Applied anyway ${fmtAgo(this.delivered.at)}: shown below, marked “delivered anyway”.`));
    } else if (this.held) {
      const error = h("p", { class: "form-error", hidden: true, "data-testid": "apply-error" });
      const btn = h("button", { type: "button", class: "btn btn-primary btn-inline", "data-testid": "apply-anyway" },
        svg(ICONS.check), "Apply anyway");
      btn.addEventListener("click", () => this.applyAnyway(btn, error));
      parts.push(h("div", { class: "gate-actions" },
        h("p", { class: "gate-note" }, "The result is held back: it was not delivered as the answer."),
        btn), error);
    } else if (output !== undefined) {
      parts.push(h("details", { class: "gate-peek" }, h("summary", {}, "Show the result anyway"),
        h("div", { class: "gate-peek-body", "data-testid": "gate-output" }, ...outputNodes(output, "stale-output").nodes)));
    }
    el.replaceChildren(...parts);
  }

  async applyAnyway(btn, error) {
    btn.disabled = true;
    btn.classList.add("busy");
    error.hidden = true;
    const id = encodeURIComponent(this.runId);
    try {
      this.showDelivered(await api("POST", `/runs/${id}/deliver`));
      refreshRuns();
    } catch (err) {
      if (err.status === 409 && err.detail && err.detail.code === "already_delivered") {
        // Someone (another tab) applied it first: show what they delivered.
        try {
          const run = await api("GET", `/runs/${id}`);
          this.showDelivered({ output: run.result, verdict: run.verdict, delivered_at: (run.delivery || {}).delivered_at });
          return;
        } catch (_) { /* fall through to the error */ }
      }
      error.hidden = false;
      error.textContent = `Could not apply it: ${err.message}`;
      btn.disabled = false;
    } finally {
      btn.classList.remove("busy");
    }
  }

  /** The held result, released (POST /runs/{id}/deliver, or a RESULT on the context). */
  showDelivered(body) {
    if (this.delivered) return;
    const verdict = body.verdict || this.verdict;
    this.delivered = { at: Number.isFinite(body.delivered_at) ? body.delivered_at : Date.now() / 1000 };
    this.held = true;
    this.result = body.output;
    if (verdict) this.showGate(verdict, {});
    this.renderAnswer(body.output, { verdict, delivered: true });
  }

  onError(ev) {
    const code = ev.data.code ? ` (${ev.data.code})` : "";
    this.notice("error", "Failed —", `${ev.data.message || "the run failed"}${code}`);
  }

  notice(kind, title, text) {
    this.noticesEl.append(h("div", { class: `notice notice-${kind}` }, h("strong", {}, title), " ", text || ""));
  }

  lane(ns) {
    let lane = this.lanes.get(ns);
    if (lane) return lane;
    const known = KNOWN_LANES[ns];
    const count = h("span", { class: "lane-count" }, "0");
    const body = h("div", { class: "lane-body" });
    const el = h("section", { class: `lane ${known ? known.cls : "lane-custom"}`, "data-lane": ns },
      h("header", { class: "lane-head" },
        h("span", { class: "lane-icon" }, svg(ICONS[known ? known.icon : "custom"])),
        h("h3", {}, known ? known.title : ns),
        known ? h("code", { class: "lane-ns" }, ns) : null,
        count),
      body);
    if (!known) el.style.setProperty("--hue", hueOf(ns));
    lane = { ns, el, body, countEl: count, n: 0, follow: true, dirty: false };
    body.addEventListener("scroll", () => {
      lane.follow = body.scrollHeight - body.scrollTop - body.clientHeight < 48;
    }, { passive: true });
    // Known lanes keep a stable order; custom ones follow in order of appearance.
    const order = ["THOUGHT", "TOOL_USE", "CRITIC_EVAL"];
    const idx = order.indexOf(ns);
    let before = null;
    if (idx >= 0) {
      for (const other of this.lanesEl.children) {
        const oi = order.indexOf(other.dataset.lane);
        if (oi < 0 || oi > idx) { before = other; break; }
      }
    }
    this.lanesEl.insertBefore(el, before);
    this.lanes.set(ns, lane);
    this.lanesEl.dataset.count = String(this.lanes.size);
    return lane;
  }

  bump(lane) {
    lane.n += 1;
    lane.countEl.textContent = fmtNum(lane.n);
    lane.dirty = true;
  }

  /** Keep a lane's DOM bounded: a long run shows its latest items; the log has them all. */
  trim(lane) {
    const body = lane.body;
    const items = body.childElementCount - (lane.trimmedEl ? 1 : 0);
    if (items <= MAX_LANE_ITEMS) return;
    if (!lane.trimmedEl) {
      lane.trimmedEl = h("div", { class: "lane-trimmed" });
      lane.trimmed = 0;
      body.prepend(lane.trimmedEl);
    }
    let extra = items - MAX_LANE_ITEMS;
    while (extra-- > 0 && lane.trimmedEl.nextElementSibling) {
      lane.trimmedEl.nextElementSibling.remove();
      lane.trimmed += 1;
    }
    lane.trimmedEl.textContent = `${fmtNum(lane.trimmed)} earlier items not shown`;
  }

  countText(ev) {
    this.chunks += 1;
    if (this.firstTextTs === null) this.firstTextTs = ev.ts;
    this.lastTextTs = ev.ts;
  }

  noteActive(agent) {
    if (agent && agent !== "graph" && agent !== "server") this.activeNode = agent;
  }

  closeThought() {
    if (this.thought) {
      this.thought.el.classList.remove("streaming");
      this.thought = null;
    }
  }

  onThought(ev) {
    const text = typeof ev.data.text === "string" ? ev.data.text : "";
    const lane = this.lane("THOUGHT");
    this.bump(lane);
    this.countText(ev);
    this.noteActive(ev.agent);
    if (!this.thought || this.thought.agent !== ev.agent) {
      this.closeThought();
      if (this.firstThoughtAgent === null) this.firstThoughtAgent = ev.agent;
      const n = (this.blockCount.get(ev.agent) || 0) + 1;
      this.blockCount.set(ev.agent, n);
      const textEl = h("div", { class: "tblock-text" });
      const node = document.createTextNode("");
      textEl.append(node);
      const label = h("div", { class: "tblock-label" }, h("span", { class: "node" }, ev.agent),
        ev.agent === this.firstThoughtAgent ? h("span", { class: "round" }, `round ${n}`) : null);
      const el = h("div", { class: "tblock streaming", "data-agent": ev.agent }, label, textEl);
      lane.body.append(el);
      this.thought = { agent: ev.agent, el, node };
    }
    this.thought.node.appendData(text);
  }

  onTool(ev) {
    const d = ev.data;
    const lane = this.lane("TOOL_USE");
    this.bump(lane);
    this.noteActive(ev.agent);
    const id = d.call_id || `seq-${ev.seq}`;
    let card = this.tools.get(id);
    if (!card) {
      card = h("div", { class: "tool", "data-state": "running", "data-call-id": id },
        h("div", { class: "tool-head" },
          h("span", { class: "tool-name" }, d.tool || "tool"),
          h("span", { class: "tool-state" }, h("span", { class: "spinner" }), "running")),
        h("div", { class: "tool-args" }));
      const argsEl = card.querySelector(".tool-args");
      const args = d.args && typeof d.args === "object" ? d.args : {};
      for (const [k, v] of Object.entries(args)) {
        argsEl.append(h("div", { class: "arg" }, h("span", { class: "arg-k" }, k),
          h("span", { class: "arg-v" }, typeof v === "string" ? v : JSON.stringify(v))));
      }
      if (!argsEl.childElementCount) argsEl.remove();
      this.tools.set(id, card);
      lane.body.append(card);
      this.trim(lane);
    }
    if (d.phase === "declined") {
      card.dataset.state = "declined";
      card.querySelector(".tool-state").replaceChildren(svg(ICONS.cross), "declined");
      return;
    }
    if (d.phase === "result") {
      const ok = d.ok !== false && !d.error;
      card.dataset.state = ok ? "ok" : "error";
      const st = card.querySelector(".tool-state");
      fillWith(st, svg(ok ? ICONS.check : ICONS.cross), ok ? "ok" : "error",
        Number.isFinite(d.duration_ms) ? h("span", { class: "dur" }, `${d.duration_ms < 10 ? d.duration_ms.toFixed(1) : Math.round(d.duration_ms)} ms`) : null);
      card.append(ok ? this.toolResult(d.result) : h("div", { class: "tool-error" }, d.error || "failed"));
    }
  }

  toolResult(r) {
    const wrap = h("div", { class: "tool-result" });
    if (Array.isArray(r) && r.length && r.every((x) => x && typeof x === "object" && ("title" in x || "snippet" in x))) {
      const ul = h("ul", { class: "hits" });
      for (const x of r) {
        ul.append(h("li", {}, h("span", { class: "hit-title" }, x.title || x.id || "result"),
          Number.isFinite(x.score) ? h("span", { class: "hit-score" }, x.score.toFixed(1)) : null,
          x.snippet ? h("span", { class: "hit-snippet" }, x.snippet) : null));
      }
      wrap.append(ul);
    } else if (Array.isArray(r) && r.length === 0) {
      wrap.append(h("div", { class: "tool-empty" }, "no results"));
    } else if (typeof r === "string" || typeof r === "number" || typeof r === "boolean") {
      wrap.append(h("div", { class: "tool-value" }, h("span", { class: "arrow" }, "→"), String(r)));
    } else {
      wrap.append(h("pre", { class: "json" }, prettyJSON(r)));
    }
    return wrap;
  }

  onCritic(ev) {
    const d = ev.data;
    const lane = this.lane("CRITIC_EVAL");
    this.bump(lane);
    if (typeof d.text === "string" && d.verdict === undefined) {
      this.countText(ev);
      this.noteActive(ev.agent);
      if (!this.criticPending) {
        const textEl = h("div", { class: "critic-raw" });
        const node = document.createTextNode("");
        textEl.append(node);
        const el = h("div", { class: "critic streaming", "data-state": "thinking" },
          h("div", { class: "critic-head" }, h("span", { class: "critic-round" }, "evaluating…")), textEl);
        lane.body.append(el);
        this.criticPending = { el, node, agent: ev.agent };
      }
      this.criticPending.node.appendData(d.text);
      return;
    }
    // The verdict: turn the streaming card (if any) into a verdict card.
    let el;
    if (this.criticPending) {
      el = this.criticPending.el;
      this.criticPending = null;
    } else {
      el = h("div", { class: "critic" });
      lane.body.append(el);
    }
    const verdict = String(d.verdict || "note").toLowerCase();
    const score = Number(d.score);
    const raw = el.querySelector(".critic-raw");
    el.className = "critic";
    el.dataset.state = "done";
    el.dataset.verdict = verdict;
    fillWith(el,
      h("div", { class: "critic-head" },
        h("span", { class: "critic-round" }, d.round ? `Round ${d.round}` : "Evaluation"),
        h("span", { class: "verdict", "data-verdict": verdict, "data-testid": "verdict" },
          svg(verdict === "approve" ? ICONS.check : verdict === "revise" ? ICONS.resume : ICONS.critic), verdict)),
      Number.isFinite(score)
        ? h("div", { class: "score" },
            h("div", { class: "score-bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": String(score), "aria-label": "score" },
              h("span", { style: `width:${Math.round(Math.max(0, Math.min(1, score)) * 100)}%` })),
            h("span", { class: "score-n" }, score.toFixed(2)))
        : null,
      d.reason ? h("p", { class: "critic-reason" }, d.reason) : null,
    );
    if (raw && raw.textContent) {
      const det = h("details", { class: "critic-rawbox" }, h("summary", {}, "critic output"), raw);
      el.append(det);
    }
  }

  onCustom(ev) {
    const lane = this.lane(ev.ns);
    this.bump(lane);
    const d = ev.data || {};
    const keys = Object.keys(d);
    if (keys.length === 1 && typeof d.text === "string") {
      this.countText(ev);
      const last = lane.body.lastElementChild;
      if (last && last.classList.contains("cflow") && last.dataset.agent === ev.agent) {
        last.querySelector(".tblock-text").firstChild.appendData(d.text);
      } else {
        lane.body.append(h("div", { class: "tblock cflow", "data-agent": ev.agent },
          h("div", { class: "tblock-label" }, h("span", { class: "node" }, ev.agent)),
          h("div", { class: "tblock-text" }, document.createTextNode(d.text))));
      }
      return;
    }
    this.chunks += 1;
    const flat = keys.length > 0 && keys.length <= 6 && keys.every((k) => d[k] === null || typeof d[k] !== "object");
    const body = flat
      ? h("div", { class: "chunk-kv" }, ...keys.map((k) => h("span", { class: "kv-pair" },
          h("span", { class: "kv-k" }, k), h("span", { class: "kv-v" }, typeof d[k] === "string" ? d[k] : JSON.stringify(d[k])))))
      : h("pre", { class: "json" }, prettyJSON(d));
    lane.body.append(h("div", { class: "chunk" },
      h("div", { class: "chunk-head" }, h("span", { class: "node" }, ev.agent), h("span", { class: "seq" }, `#${ev.seq}`)),
      body));
    this.trim(lane);
  }

  // -------------------------------------------------- rendering

  renderHead() {
    const m = this.metric;
    m.steps.textContent = fmtNum(this.steps.length);
    m.events.textContent = fmtNum(this.events);
    m.chunks.textContent = fmtNum(this.chunks);
    const span = this.firstTextTs !== null ? (this.lastTextTs - this.firstTextTs) : 0;
    m.rate.textContent = this.chunks > 1 && span > 0.05 ? (this.chunks / span).toFixed(this.chunks / span < 10 ? 1 : 0) : "—";
    // A progress estimate: steps so far against the run's typical length, never 100% until the end.
    const done = TERMINAL_STATES.has(this.status);
    const pct = done ? 100 : Math.min(92, this.steps.length * 12 + (this.startTs ? 4 : 0));
    this.progressBar.firstChild.style.width = `${pct}%`;
    this.progressBar.dataset.done = String(done);
    let live = this.progressEl.querySelector(".step.active");
    if (!done && this.status === "running") {
      if (!live) {
        live = h("li", { class: "step active" }, h("span", { class: "step-n" }, String(this.steps.length + 1)), h("span", { class: "step-node" }));
        this.progressEl.append(live);
      } else if (live !== this.progressEl.lastElementChild) {
        this.progressEl.append(live);
        live.querySelector(".step-n").textContent = String(this.steps.length + 1);
      }
      live.querySelector(".step-node").textContent = this.activeNode || "…";
    } else if (live) {
      live.remove();
    }
    for (const lane of this.lanes.values()) lane.el.classList.toggle("is-live", !done && this.activeLane() === lane.ns);
    this.renderClock();
  }

  activeLane() {
    return this.lastLaneNs;
  }

  renderClock() {
    let elapsed = null;
    if (this.startTs !== null) {
      if (this.endTs !== null) elapsed = this.endTs - this.startTs;
      else if (this.lastTs !== null) elapsed = this.lastTs - this.startTs + (Date.now() / 1000 - this.lastLocal);
    }
    this.metric.elapsed.textContent = elapsed === null ? "—" : fmtDuration(elapsed);
  }

  scrollLanes(force = false) {
    // Lanes the reader left at the bottom follow the stream; a lane scrolled up stays put.
    for (const lane of this.lanes.values()) {
      if ((lane.dirty || force) && lane.follow) lane.body.scrollTop = lane.body.scrollHeight;
      lane.dirty = false;
    }
  }

  async cancel() {
    this.cancelBtn.disabled = true;
    try {
      await api("POST", `/runs/${encodeURIComponent(this.runId)}/cancel`);
    } catch (err) {
      toast(`Cancel failed: ${err.message}`);
    } finally {
      this.cancelBtn.disabled = false;
    }
  }
}

// ---------------------------------------------------------------- watching

function readHash() {
  const p = new URLSearchParams(location.hash.replace(/^#/, ""));
  return { run: p.get("run"), transport: p.get("transport"), view: p.get("view") };
}

function writeHash(runId) {
  // #run=<id>&transport=<t>: a link (or a reload) reopens the same run the same way.
  const p = new URLSearchParams();
  if (runId) {
    p.set("run", runId);
    p.set("transport", state.transport);
  }
  const next = runId ? `#${p}` : "";
  if (location.hash !== next) history.replaceState(null, "", next || location.pathname);
}

function effectiveTransport() {
  if (state.transport === "socketio" && state.socketio.ok === false) return "sse";
  return state.transport;
}

function startWatch(view, { after = null, events = [] } = {}) {
  if (state.watch) state.watch.close();
  const transport = effectiveTransport();
  const w = watchRun(view.runId, {
    transport,
    after,
    events,
    onEvent: (ev) => view.apply(ev),
    onRewind: ({ events: kept }) => view.rebuild(kept),
    onReset: (info) => {
      view.rebuild([]);
      view.notice("warn", "History trimmed.",
        `The server no longer keeps this run's events before #${info.first_seq ?? "?"}; showing what it keeps.`);
    },
    onSnapshot: (run) => view.setRecord(run),
    onConnection: (s, detail) => { if (state.watch === w) setConn(s, detail); },
    onEnd: () => refreshRuns(),
    onError: (err) => {
      if (err.code === "socketio_unavailable") {
        markSocketIO(false, err.message);
        startWatch(view, { after: w.lastSeq, events: w.events });
        return;
      }
      view.notice("error", "Cannot watch this run.", err.message || err.code);
    },
  });
  state.watch = w;
  return w;
}

async function openRun(runId) {
  if (!runId) return;
  if (state.view && state.view.runId === runId) return;
  closeRun();
  state.runId = runId;
  writeHash(runId);
  $("#empty").hidden = true;
  const view = new RunView(runId);
  state.view = view;
  $("#run-slot").replaceChildren(view.root);
  markActiveRun();
  // On a phone the run sits above the form and the list: bring it into view.
  if (view.root.getBoundingClientRect().top < 0) {
    const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
    window.scrollTo({ top: 0, behavior: smooth ? "smooth" : "auto" });
  }
  api("GET", `/runs/${encodeURIComponent(runId)}`).then((run) => {
    if (state.view !== view) return;
    view.setRecord(run);
    // The document panel follows the run being looked at.
    const key = run.context && run.context.key;
    if (key && key !== ctxKeyOfForm() && !run.thread_id) {
      $("#ctx-key").value = key;
      setCtxKey(key);
    }
  }, (err) => {
    if (state.view === view && err.status === 404) view.notice("error", "Unknown run.", "This server does not know that run id.");
  });
  startWatch(view);
}

function goHome() {
  closeRun();
  writeHash(null);
  $("#run-slot").replaceChildren();
  $("#empty").hidden = false;
  markActiveRun();
}

function closeRun() {
  if (state.watch) state.watch.close();
  state.watch = null;
  if (state.view) state.view.destroy();
  state.view = null;
  state.runId = null;
  setConn("idle");
}

// ---------------------------------------------------------------- transport switch

function renderTransport() {
  for (const b of document.querySelectorAll("#transport-switch button")) {
    const on = b.dataset.transport === effectiveTransport();
    b.setAttribute("aria-checked", String(on));
    if (b.dataset.transport === "socketio") {
      b.disabled = state.socketio.ok === false;
      b.title = state.socketio.ok === false ? `Socket.IO unavailable: ${state.socketio.error}` : "Watch over Socket.IO (WebSocket)";
    } else {
      b.title = "Watch over Server-Sent Events";
    }
  }
}

function markSocketIO(ok, error) {
  state.socketio = { ok, error: error || null };
  const note = $("#transport-note");
  if (ok === false) {
    note.hidden = false;
    note.replaceChildren(h("strong", {}, "Socket.IO is unavailable: "), error, ". Watching over SSE instead.");
  } else {
    note.hidden = true;
  }
  renderTransport();
}

function setTransport(t) {
  if (t === state.transport) return;
  state.transport = t;
  localStorage.setItem("ts.transport", t);
  renderTransport();
  if (state.runId) writeHash(state.runId);
  if (state.view && state.watch) {
    // Same view, other transport: continue from the last event shown.
    const w = state.watch;
    startWatch(state.view, { after: w.lastSeq, events: w.events });
  }
}

// ---------------------------------------------------------------- recent runs

async function refreshRuns() {
  // Signed out: each poll would only be refused again.
  if (state.auth.signIn && !state.auth.signIn.soft) return;
  let data;
  try {
    data = await api("GET", "/runs?limit=30");
  } catch (_) {
    return;
  }
  const runs = data.runs || [];
  $("#runs-empty").textContent = "No runs yet.";
  const key = JSON.stringify(runs.map((r) => [r.run_id, r.status, r.progress && r.progress.steps,
    r.verdict && r.verdict.state, r.delivery && r.delivery.delivered_at]));
  $("#runs-empty").hidden = runs.length > 0;
  const list = $("#runs-list");
  if (key === state.runsKey) {
    for (const t of list.querySelectorAll("time")) t.textContent = fmtAgo(Number(t.dataset.ts));
    return;
  }
  state.runsKey = key;
  list.replaceChildren(...runs.map((r) => {
    const a = h("a", { class: "run-item", href: `#run=${r.run_id}`, "data-run-id": r.run_id, "data-status": r.status },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("span", { class: "run-item-main" },
        h("span", { class: "run-item-title" }, inputSummary(r.input) || r.run_id),
        h("span", { class: "run-item-meta" },
          h("span", { class: "agent-mini" }, r.agent), " · ",
          h("span", { class: "st" }, r.status), " · ",
          r.verdict && r.verdict.state !== "fresh"
            ? [h("span", { class: "gate-mini", "data-state": r.verdict.state, title: r.verdict.reason },
              r.delivery && r.delivery.held ? (r.delivery.delivered_at ? `${r.verdict.state} · delivered` : `${r.verdict.state} · held`)
                : r.verdict.state), " · "]
            : null,
          h("time", { "data-ts": String(r.created_at) }, fmtAgo(r.created_at)))));
    return h("li", {}, a);
  }));
  markActiveRun();
}

function markActiveRun() {
  for (const a of document.querySelectorAll(".run-item")) a.classList.toggle("active", a.dataset.runId === state.runId);
}

// ---------------------------------------------------------------- new-run form

function fieldSchema(s) {
  // Optional fields come as anyOf [{type: X}, {type: "null"}]: use the non-null branch.
  const branches = s.anyOf || s.oneOf;
  if (Array.isArray(branches)) {
    const real = branches.find((b) => b.type && b.type !== "null");
    if (real) return { ...real, ...s, type: real.type, anyOf: undefined, nullable: true };
  }
  return s;
}

function renderAgentForm(agent) {
  const box = $("#agent-fields");
  box.replaceChildren();
  $("#agent-desc").textContent = agent ? agent.description || "" : "";
  if (!agent) return;
  const schema = agent.input_schema || {};
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(props)) {
    const s = fieldSchema(raw);
    const label = s.title || name;
    const id = `f-${agent.name}-${name}`;
    const req = required.has(name);
    let input;
    const def = s.default === null || s.default === undefined ? "" : s.default;
    if (Array.isArray(s.enum)) {
      input = h("select", { id, name }, ...(req ? [] : [h("option", { value: "" }, "—")]),
        ...s.enum.map((v) => h("option", { value: JSON.stringify(v), selected: v === s.default }, String(v))));
      input.dataset.kind = "enum";
    } else if (s.type === "string") {
      const long = !s.maxLength || s.maxLength > 120;
      input = long
        ? h("textarea", { id, name, rows: "3", maxlength: s.maxLength, minlength: s.minLength })
        : h("input", { id, name, type: "text", maxlength: s.maxLength });
      input.value = def;
      input.dataset.kind = "string";
      if (name === "question" || name === "text") {
        input.placeholder = name === "question"
          ? "e.g. What is 17 × 23, and when was the Eiffel Tower built?"
          : "Some text to work on";
      }
    } else if (s.type === "integer" || s.type === "number") {
      input = h("input", { id, name, type: "number", inputmode: s.type === "integer" ? "numeric" : "decimal",
        step: s.type === "integer" ? "1" : "any", min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum });
      input.value = def;
      input.dataset.kind = s.type;
      if (def === "" && !req) input.placeholder = "default";
    } else if (s.type === "boolean") {
      input = h("input", { id, name, type: "checkbox" });
      input.checked = def === true;
      input.dataset.kind = "boolean";
    } else {
      input = h("textarea", { id, name, rows: "3", class: "mono", placeholder: "JSON" });
      input.value = def === "" ? "" : prettyJSON(def);
      input.dataset.kind = "json";
    }
    input.dataset.field = name;
    if (req) input.dataset.required = "1";
    const hint = s.description ? h("span", { class: "field-hint" }, s.description) : null;
    const labelEl = h("span", { class: "field-label" }, label, req ? null : h("span", { class: "opt" }, "optional"));
    const wrap = s.type === "boolean"
      ? h("label", { class: "field field-check", for: id }, input, labelEl, hint)
      : h("label", { class: "field", for: id }, labelEl, input, hint);
    box.append(wrap);
  }
  const first = box.querySelector("textarea, input");
  if (first && first.tagName === "TEXTAREA") {
    first.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.metaKey || e.ctrlKey)) $("#run-form").requestSubmit();
    });
  }
}

function readForm() {
  const input = {};
  for (const el of document.querySelectorAll("#agent-fields [data-field]")) {
    const name = el.dataset.field;
    const kind = el.dataset.kind;
    const req = el.dataset.required === "1";
    let v;
    if (kind === "boolean") v = el.checked;
    else if (kind === "enum") v = el.value === "" ? undefined : JSON.parse(el.value);
    else if (kind === "integer" || kind === "number") {
      if (el.value.trim() === "") v = undefined;
      else {
        v = Number(el.value);
        if (!Number.isFinite(v) || (kind === "integer" && !Number.isInteger(v))) throw fieldError(name, `must be ${kind === "integer" ? "a whole number" : "a number"}`);
      }
    } else if (kind === "json") {
      if (el.value.trim() === "") v = undefined;
      else {
        try { v = JSON.parse(el.value); } catch (_) { throw fieldError(name, "must be valid JSON"); }
      }
    } else {
      v = el.value;
      if (v.trim() === "" && !req) v = undefined;
    }
    if (req && (v === undefined || v === "")) throw fieldError(name, "is required");
    if (v !== undefined) input[name] = v;
  }
  return input;
}

function fieldError(name, message) {
  const e = new Error(`${name} ${message}`);
  e.field = name;
  return e;
}

function showFormError(err) {
  const p = $("#form-error");
  for (const el of document.querySelectorAll("#agent-fields .invalid")) el.classList.remove("invalid");
  if (!err) { p.hidden = true; return; }
  p.hidden = false;
  p.textContent = err.message;
  const field = err.field || (err.detail && err.detail.field ? String(err.detail.field).replace(/^input\./, "") : null);
  const el = field && document.querySelector(`#agent-fields [data-field="${CSS.escape(field)}"]`);
  if (el) { el.classList.add("invalid"); el.focus(); }
}

async function submitRun(e) {
  e.preventDefault();
  const agent = $("#agent-select").value;
  let input;
  try {
    input = readForm();
  } catch (err) {
    showFormError(err);
    return;
  }
  showFormError(null);
  const btn = $("#start-btn");
  btn.disabled = true;
  btn.classList.add("busy");
  try {
    const body = { agent, input };
    const key = ctxKeyOfForm();
    if (key) {
      // The run answers the document at its version now (rev-1 for a key nobody used yet).
      await setCtxKey(key);
      const c = state.ctx;
      if (c && c.key === key) await loadCtx(c);
      const version = (c && c.key === key && c.view && c.view.version) || "rev-1";
      body.context = { key, version, on_stale: $("#ctx-onstale").value === "hold" ? "hold" : "mark" };
    }
    const res = await api("POST", "/runs", body);
    // A new key exists now: the panel shows it and watches it.
    if (key && state.ctx && state.ctx.key === key && !state.ctx.view) loadCtx(state.ctx);
    await openRun(res.run_id);
    refreshRuns();
  } catch (err) {
    showFormError(err);
  } finally {
    btn.disabled = !mayStartRuns(state.auth.who);
    btn.classList.remove("busy");
  }
}

async function loadAgents() {
  try {
    const data = await api("GET", "/agents");
    state.agents = data.agents || [];
  } catch (err) {
    // A 401 opened the sign-in box; the agents load after the sign-in.
    if (err.status !== 401) showFormError(new Error(`Could not load agents: ${err.message}`));
    return;
  }
  state.agentsLoaded = true;
  showFormError(null);
  const sel = $("#agent-select");
  sel.replaceChildren(...state.agents.map((a) => h("option", { value: a.name }, a.name)));
  const saved = localStorage.getItem("ts.agent");
  if (saved && state.agents.some((a) => a.name === saved)) sel.value = saved;
  renderAgentForm(state.agents.find((a) => a.name === sel.value));
}

// ---------------------------------------------------------------- the document (a delivery context)

// The form's "context" names a document (a delivery context, issue 13); the panel beside it
// shows that document: its version, an "Edit the document" button (PUT /contexts/{key} with
// the next version, so a run in flight on it ends stale), and its inbox - the results that
// finished while nobody watched - from the context stream's INBOX, with "Dismiss" to ack it.
const CTX_KEY = "ts.context";
const CTX_ONSTALE = "ts.onStale";
const CTX_DEFAULT = "demo-doc";
const CTX_POLL_MS = 3000;

/** rev-7 -> rev-8; v -> v-2; nothing -> rev-1. */
function nextVersion(v) {
  if (!v) return "rev-1";
  const m = /^(.*?)(\d+)$/.exec(v);
  return m ? `${m[1]}${Number(m[2]) + 1}` : `${v}-2`;
}

function ctxKeyOfForm() {
  return $("#ctx-key").value.trim();
}

function ctxPath(key, tail = "") {
  return `/contexts/${encodeURIComponent(key)}${tail}`;
}

/** Work on this document from now on ("" for none). Resolves once its view is loaded. */
function setCtxKey(key, { force = false } = {}) {
  key = (key || "").trim().slice(0, 200);
  const cur = state.ctx;
  if (cur && cur.key === key && !force) return cur.loading;
  closeCtx();
  localStorage.setItem(CTX_KEY, key);
  if (!key) {
    state.ctx = null;
    renderCtx();
    return Promise.resolve();
  }
  const c = { key, view: null, known: null, inbox: [], inboxFromStream: false, stream: null, live: "idle",
    polling: false, poll: null, busy: null, error: null, events: [] };
  state.ctx = c;
  c.loading = loadCtx(c);
  renderCtx();
  return c.loading;
}

function closeCtx() {
  const c = state.ctx;
  if (!c) return;
  c.closed = true;
  if (c.stream) c.stream.close();
  c.stream = null;
  clearInterval(c.poll);
}

/** GET /contexts/{key}: the version and runs in flight (404: nobody used the key yet). */
async function loadCtx(c) {
  if (state.auth.signIn && !state.auth.signIn.soft) {
    c.error = "Sign in to see this document.";
    renderCtx();
    return;
  }
  let view;
  try {
    view = await api("GET", ctxPath(c.key));
  } catch (err) {
    if (c.closed) return;
    if (err.status === 404) {
      c.known = false;
      c.view = null;
      c.error = null;
    } else {
      c.error = err.status === 401 ? "Sign in to see this document." : `Could not load it: ${err.message}`;
    }
    renderCtx();
    return;
  }
  if (c.closed) return;
  c.known = true;
  c.view = view;
  c.error = null;
  // The stream's INBOX is the inbox; a poll (or the first GET, before it) shows the record's.
  if (c.polling || !c.inboxFromStream) c.inbox = view.inbox || [];
  if (!c.polling) openCtxStream(c);
  renderCtx();
}

function openCtxStream(c) {
  if (c.closed || c.polling) return;
  if (c.stream) {
    if (c.stream.state === "unknown") c.stream.resume(); // the key exists now
    return;
  }
  c.stream = watchContext(c.key, {
    onInbox: (p) => {
      if (c.closed) return;
      c.inbox = Array.isArray(p.entries) ? p.entries : [];
      c.inboxFromStream = true;
      renderCtx();
    },
    onEvent: (ev) => onCtxEvent(c, ev),
    onState: (st, detail) => {
      if (c.closed) return;
      c.live = st;
      c.liveDetail = detail;
      if (st === "live" && detail.resynced) loadCtx(c); // after a drop: the version may have moved
      if (st === "error") startCtxPolling(c, detail.message || detail.code);
      renderCtxLive();
    },
  });
}

/** The stream cannot be had (an older server, a proxy): poll GET /contexts/{key} instead. */
function startCtxPolling(c, why) {
  if (c.polling) return;
  c.polling = true;
  c.pollWhy = why;
  if (c.stream) c.stream.close();
  c.stream = null;
  c.live = "polling";
  c.poll = setInterval(() => { if (!document.hidden) loadCtx(c); }, CTX_POLL_MS);
  renderCtxLive();
}

function onCtxEvent(c, ev) {
  if (c.closed) return;
  const d = ev.data || {};
  c.events.push({ ns: ev.ns, seq: ev.seq, run_id: d.run_id || null });
  const view = c.view;
  switch (ev.ns) {
    case "VERSION":
      if (view) {
        view.version = d.version;
        view.updated_at = ev.ts;
      }
      break;
    case "RUN_STARTED":
      if (view && !view.runs.some((r) => r.run_id === d.run_id)) view.runs.push({ run_id: d.run_id, version: d.version, status: "queued" });
      break;
    case "VERDICT":
      if (view) view.runs = view.runs.filter((r) => r.run_id !== d.run_id);
      if (d.unwatched && !c.inbox.some((e) => e.run_id === d.run_id)) {
        c.inbox = [{ run_id: d.run_id, status: d.status, verdict: d.verdict, ended_at: ev.ts, held: d.held }, ...c.inbox];
      }
      refreshRuns();
      break;
    case "RESULT":
      // A held result released (by this page or another): the open run shows it.
      if (state.view && state.view.runId === d.run_id) state.view.showDelivered(d);
      refreshRuns();
      break;
    default:
      break;
  }
  renderCtx();
}

const CTX_LIVE_LABEL = {
  idle: "", connecting: "connecting…", live: "live", reconnecting: "reconnecting…", unknown: "new",
  unauthorized: "sign in", error: "offline", polling: "polling",
};

function renderCtxLive() {
  const el = $("#ctx-live");
  const c = state.ctx;
  const st = c ? c.live : "idle";
  el.dataset.state = st;
  el.textContent = CTX_LIVE_LABEL[st] ?? st;
  el.title = !c ? "" : st === "live" ? "Watching this document's events (GET /contexts/{key}/events)"
    : st === "polling" ? `Polling GET /contexts/{key} every ${CTX_POLL_MS / 1000} s: ${c.pollWhy || "no stream"}`
      : st === "unknown" ? "Nobody used this key yet: the first run (or edit) creates it" : el.textContent;
}

function verdictMini(verdict, testid) {
  const st = verdict && verdict.state ? verdict.state : "none";
  return h("span", { class: "gate-mini", "data-state": st, "data-testid": testid, title: verdict && verdict.reason },
    verdict ? st : "no verdict");
}

function renderCtx() {
  const panel = $("#ctx-panel");
  const c = state.ctx;
  const formVer = $("#ctx-key-version");
  renderCtxLive();
  if (!c) {
    panel.hidden = true;
    formVer.textContent = "";
    formVer.dataset.state = "none";
    return;
  }
  panel.hidden = false;
  const view = c.view;
  const version = view ? view.version : null;
  formVer.dataset.state = c.known === false ? "new" : view ? "known" : "loading";
  formVer.textContent = view ? `@ ${version ?? "—"}` : c.known === false ? "new · rev-1" : "";
  formVer.title = view ? `the run will answer ${c.key} at ${version}` : c.known === false
    ? `${c.key} does not exist yet: the run creates it at rev-1` : "";

  const can = mayStartRuns(state.auth.who);
  const inflight = view ? view.runs.length : 0;
  const next = nextVersion(version);
  const edit = h("button", { type: "button", class: "btn btn-ghost ctx-edit", "data-testid": "ctx-edit",
    disabled: !can || c.busy === "edit" || (!view && c.known !== false),
    title: can ? `PUT ${ctxPath(c.key)} {version: "${next}"}: a run in flight on it ends stale` : "Viewers cannot edit documents" },
  svg(ICONS.edit), "Edit the document");
  edit.addEventListener("click", () => editCtx(c));

  const doc = h("div", { class: "ctx-doc" },
    h("span", { class: "ctx-doc-icon" }, svg(ICONS.doc)),
    h("div", { class: "ctx-doc-main" },
      h("code", { class: "ctx-doc-key", "data-testid": "ctx-key-shown", title: c.key }, c.key),
      h("span", { class: "ctx-doc-meta" },
        view ? h("span", { class: "ctx-version", "data-testid": "ctx-version" }, version ?? "—")
          : h("span", { class: "ctx-version ctx-version-new", "data-testid": "ctx-version" }, c.known === false ? "not created yet" : "…"),
        view && view.updated_at ? h("span", {}, ` · edited ${fmtAgo(view.updated_at)}`) : null)));
  const meta = h("p", { class: "ctx-inflight", "data-testid": "ctx-inflight", "data-count": String(inflight) },
    inflight === 0 ? "No run in flight on it." : `${inflight} run${inflight === 1 ? "" : "s"} in flight on it: editing it now makes ${inflight === 1 ? "its" : "their"} result stale.`);

  const parts = [doc, meta, h("div", { class: "ctx-actions" }, edit,
    h("span", { class: "ctx-next" }, version ? `→ ${next}` : ""))];
  if (c.error) parts.push(h("p", { class: "form-error", "data-testid": "ctx-error" }, c.error));

  const inbox = c.inbox || [];
  if (inbox.length) {
    const n = inbox.length;
    const dismiss = h("button", { type: "button", class: "btn-link", "data-testid": "ctx-dismiss",
      disabled: !can || c.busy === "ack", title: can ? `POST ${ctxPath(c.key, "/inbox/ack")}` : "Viewers cannot dismiss" }, "Dismiss");
    dismiss.addEventListener("click", () => dismissInbox(c));
    parts.push(h("div", { class: "ctx-inbox", "data-testid": "ctx-inbox", "data-count": String(n) },
      h("div", { class: "ctx-inbox-head" }, svg(ICONS.inbox),
        h("span", { "data-testid": "ctx-inbox-title" }, `${n} result${n === 1 ? "" : "s"} finished while you were away`),
        dismiss),
      h("ul", { class: "ctx-inbox-list" }, ...inbox.map((e) => h("li", {},
        h("a", { class: "ctx-entry", href: `#run=${e.run_id}`, "data-testid": "ctx-inbox-entry", "data-run-id": e.run_id,
          "data-verdict": e.verdict ? e.verdict.state : "none", "data-status": e.status },
        verdictMini(e.verdict, "ctx-entry-verdict"),
        h("span", { class: "ctx-entry-main" },
          h("span", { class: "ctx-entry-id" }, String(e.run_id).slice(0, 12)),
          h("span", { class: "ctx-entry-meta" }, e.status, e.held ? " · held" : "",
            e.verdict && e.verdict.version ? ` · on ${e.verdict.version}` : "",
            Number.isFinite(e.ended_at) ? ` · ${fmtAgo(e.ended_at)}` : ""))))))));
  } else if (view) {
    parts.push(h("p", { class: "ctx-inbox-empty", "data-testid": "ctx-inbox-empty" }, "Nothing finished while you were away."));
  }
  $("#ctx-body").replaceChildren(...parts);
}

async function editCtx(c) {
  if (c.busy) return;
  c.busy = "edit";
  renderCtx();
  try {
    const view = await api("PUT", ctxPath(c.key), { version: nextVersion(c.view && c.view.version) });
    if (c.closed) return;
    c.view = view;
    c.known = true;
    c.error = null;
    openCtxStream(c);
  } catch (err) {
    toast(`Could not edit the document: ${err.message}`);
  } finally {
    c.busy = null;
    if (!c.closed) renderCtx();
  }
}

async function dismissInbox(c) {
  if (c.busy) return;
  c.busy = "ack";
  renderCtx();
  try {
    // The entries shown, not whatever else came meanwhile.
    const view = await api("POST", ctxPath(c.key, "/inbox/ack"), { run_ids: c.inbox.map((e) => e.run_id) });
    if (c.closed) return;
    c.view = view;
    c.inbox = view.inbox || [];
  } catch (err) {
    toast(`Could not dismiss: ${err.message}`);
  } finally {
    c.busy = null;
    if (!c.closed) renderCtx();
  }
}

function initCtxForm() {
  const input = $("#ctx-key");
  const stored = localStorage.getItem(CTX_KEY);
  input.value = stored === null ? CTX_DEFAULT : stored;
  const onStale = $("#ctx-onstale");
  if (localStorage.getItem(CTX_ONSTALE) === "hold") onStale.value = "hold";
  onStale.addEventListener("change", () => localStorage.setItem(CTX_ONSTALE, onStale.value));
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => setCtxKey(input.value), 350);
  });
  input.addEventListener("change", () => {
    clearTimeout(timer);
    setCtxKey(input.value);
  });
  // Fields in #run-form submit with Enter; the key field too (a run on that document).
}

// ---------------------------------------------------------------- sign-in

// sessionStorage, never localStorage: the credential lives as long as this tab, and never in
// a URL (history, logs, Referer).
const CRED_KEY = "ts.credential";

const REASONS = {
  token_expired: "Your token expired.",
  invalid_token: "The server did not accept that credential.",
  revoked: "Your access was revoked.",
  unauthenticated: "This server needs to know who you are.",
};

function fmtExpiry(ts) {
  const left = ts - Date.now() / 1000;
  const at = new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (left <= 0) return `expired at ${at}`;
  if (left < 120) return `in ${Math.ceil(left)} s (${at})`;
  if (left < 7200) return `in ${Math.round(left / 60)} min (${at})`;
  return `${new Date(ts * 1000).toLocaleString()}`;
}

function mayStartRuns(who) {
  return !who || !Array.isArray(who.roles) || who.roles.includes("member") || who.roles.includes("admin");
}

function renderAccount() {
  const el = $("#account");
  const who = state.auth.who;
  clearInterval(renderAccount.tick);
  if (!who) {
    el.hidden = true;
    el.dataset.state = "signed-out";
    el.replaceChildren();
    renderRole();
    return;
  }
  el.hidden = false;
  if (who.via === "none") {
    // Nothing to sign in to: one quiet line, out of the way.
    el.dataset.state = "none";
    el.replaceChildren(h("span", { class: "account-local", "data-testid": "account-local" },
      svg('<circle cx="10" cy="10" r="6.5"/><path d="M7.5 10.2l1.8 1.8 3.4-3.6"/>'),
      "local, no sign-in needed"));
    renderRole();
    return;
  }
  el.dataset.state = "signed-in";
  const row = (k, v, testid) => [h("dt", {}, k), h("dd", { "data-testid": testid }, v)];
  const expires = who.expires_at ? h("span", { class: "account-exp" }, fmtExpiry(who.expires_at)) : "never (API key)";
  el.replaceChildren(
    h("div", { class: "panel-head" },
      h("h2", {}, "Signed in"),
      h("button", { type: "button", class: "btn btn-ghost", id: "signout", "data-testid": "signout", onclick: signOut }, "Sign out")),
    h("dl", { class: "who" },
      row("tenant", who.tenant, "who-tenant"),
      row("subject", who.sub, "who-sub"),
      row("roles", (who.roles || []).join(", ") || "—", "who-roles"),
      row("via", who.via === "api_key" ? "API key" : who.via === "jwt" ? "JWT" : String(who.via), "who-via"),
      row("expires", expires, "who-expires")),
    h("button", { type: "button", class: "btn-link", id: "switch-cred",
      onclick: () => showSignIn({ soft: true }) }, "Use another token"));
  if (who.expires_at) {
    const exp = $(".account-exp", el);
    renderAccount.tick = setInterval(() => {
      exp.textContent = fmtExpiry(who.expires_at);
      el.classList.toggle("expiring", who.expires_at - Date.now() / 1000 < 60);
    }, 1000);
  }
  renderRole();
}

function renderRole() {
  // A viewer watches; the server would refuse its POST /runs (403), so say so up front.
  const who = state.auth.who;
  const can = mayStartRuns(who);
  $("#start-btn").disabled = !can;
  const note = $("#role-note");
  note.hidden = can;
  if (!can) note.textContent = `Signed in as ${who.sub} (${who.roles.join(", ") || "no roles"}): you can watch this tenant's runs, not start them.`;
  if (state.ctx) renderCtx();
  renderTabs();
}

function showSignIn({ code = null, message = null, soft = false } = {}) {
  // The box lives in the Runs view: a sign-in that is needed now brings it into view; a
  // token about to expire only says so (the overview keeps polling until it does).
  if (state.tab === "ops") {
    if (soft) toast(message || "Sign in again under Runs to keep going.");
    else selectTab("runs");
  }
  state.auth.signIn = { code, message, soft };
  const box = $("#signin");
  box.hidden = false;
  box.dataset.code = code || "";
  const reason = $("#signin-reason");
  // No credential at all is the normal first visit, not an error worth a red line.
  const fresh = code === "unauthenticated" && !getCredential() && !state.auth.refused;
  if (fresh) {
    reason.hidden = true;
  } else if (code) {
    reason.hidden = false;
    reason.replaceChildren(h("strong", {}, REASONS[code] || "Signed out."), " ", message || "");
  } else if (message) {
    reason.hidden = false;
    reason.replaceChildren(message);
  } else {
    reason.hidden = true;
  }
  reason.dataset.kind = soft ? "info" : "error";
  $("#signin-cancel").hidden = !soft || !state.auth.who;
  $("#signin-error").hidden = true;
  if (!soft) {
    $("#runs-list").replaceChildren();
    state.runsKey = "";
    $("#runs-empty").hidden = false;
    $("#runs-empty").textContent = "Sign in to see your runs.";
  }
  if (!box.contains(document.activeElement) && !state.view) $("#signin-cred").focus({ preventScroll: true });
}

function hideSignIn() {
  state.auth.signIn = null;
  $("#signin").hidden = true;
  $("#signin-cred").value = "";
  renderCredKind();
}

function renderCredKind() {
  const cred = parseCredential($("#signin-cred").value);
  $("#signin-kind").textContent = !cred ? "A JWT (three dot-separated parts) or an API key."
    : cred.kind === "jwt" ? "Looks like a JWT: sent as Authorization: Bearer …"
      : "Looks like an API key: sent as X-Api-Key.";
}

async function whoami(cred) {
  const res = await authFetch("/whoami", { cache: "no-store" }, { credential: cred, report: false });
  let body = null;
  try { body = await res.json(); } catch (_) { /* empty */ }
  return { status: res.status, body };
}

async function submitSignIn(e) {
  e.preventDefault();
  const err = $("#signin-error");
  const cred = parseCredential($("#signin-cred").value);
  if (!cred) {
    err.hidden = false;
    err.textContent = "Paste a token or an API key first.";
    return;
  }
  const btn = $("#signin-btn");
  btn.disabled = true;
  btn.classList.add("busy");
  try {
    // Tried before it is used: a typo must not sign out a session that works.
    const { status, body } = await whoami(cred);
    if (status !== 200 || !body || typeof body.tenant !== "string") {
      err.hidden = false;
      err.textContent = (body && body.error && body.error.message) || `The server answered ${status}.`;
      return;
    }
    const before = state.auth.who;
    sessionStorage.setItem(CRED_KEY, cred.value);
    state.auth.refused = false;
    if (before && before.via !== "none" && before.tenant !== body.tenant && state.view) {
      // The open run belongs to the other tenant: this credential would get 404 for it.
      goHome();
    }
    setCredential(cred);
    applyWho(body);
    hideSignIn();
    setCtxKey(ctxKeyOfForm(), { force: true }); // this credential's tenant's document
    if (!state.agentsLoaded) loadAgents();
    state.runsKey = "";
    refreshRuns();
  } catch (ex) {
    err.hidden = false;
    err.textContent = `Could not reach the server: ${ex.message || ex}`;
  } finally {
    btn.disabled = false;
    btn.classList.remove("busy");
  }
}

function applyWho(who) {
  state.auth.who = who;
  renderAccount();
  scheduleExpiryCheck();
}

// At the token's exp, ask the server (its clock decides, not ours): a 401 opens the sign-in
// box through onAuthProblem; still accepted (our clock runs ahead) means asking again shortly.
function scheduleExpiryCheck(retryMs = null) {
  clearTimeout(scheduleExpiryCheck.timer);
  const who = state.auth.who;
  if (!who || !who.expires_at) return;
  const ms = retryMs ?? Math.max(1000, Math.min((who.expires_at - Date.now() / 1000) * 1000 + 250, 2 ** 31 - 1));
  scheduleExpiryCheck.timer = setTimeout(async () => {
    if (!getCredential() || state.auth.who !== who) return;
    try {
      const res = await authFetch("/whoami", { cache: "no-store" });
      if (res.status === 401) return;
    } catch (_) { /* offline: try again */ }
    if (state.auth.who === who) scheduleExpiryCheck(5000);
  }, ms);
}

function signOut() {
  // Nothing of this session stays on screen or on the wire.
  sessionStorage.removeItem(CRED_KEY);
  goHome();
  state.auth.who = null;
  state.auth.refused = false;
  clearTimeout(scheduleExpiryCheck.timer);
  state.auth.signingOut = true;
  setCredential(null);
  state.auth.signingOut = false;
  closeCtx();
  state.ctx = null;
  renderCtx();
  renderAccount();
  showSignIn({});
}

function onAuth(p) {
  state.auth.problems.push({ code: p.code, transport: p.transport, at: Date.now() });
  if (p.code === "auth_expiring") {
    if (state.auth.signIn) return;
    const s = Number.isFinite(p.in_s) ? Math.max(0, Math.round(p.in_s)) : null;
    showSignIn({ soft: true, message: `Your token expires ${s === null ? "soon" : `in ${s} s`}. Paste a new one to keep watching without a break.` });
    return;
  }
  if (state.auth.signingOut) return;
  // A retry that had no credential left says only "unauthenticated": keep the real reason.
  const open = state.auth.signIn;
  if (p.code === "unauthenticated" && !p.credential && open && open.code && !open.soft) return;
  // The credential was refused, expired or revoked: the client has dropped it already.
  if (p.credential) {
    state.auth.refused = true;
    sessionStorage.removeItem(CRED_KEY);
  }
  if (state.auth.who && state.auth.who.via !== "none") {
    state.auth.who = null;
    clearTimeout(scheduleExpiryCheck.timer);
    renderAccount();
  }
  showSignIn({ code: p.code, message: p.message });
}

/** Where the viewer starts: who are we? Resolves once the answer (or its absence) is shown. */
async function initAuth() {
  onAuthProblem(onAuth);
  const stored = sessionStorage.getItem(CRED_KEY);
  if (stored) setCredential(stored);
  $("#signin-form").addEventListener("submit", submitSignIn);
  $("#signin-cred").addEventListener("input", renderCredKind);
  $("#signin-cred").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#signin-form").requestSubmit(); }
  });
  $("#signin-cancel").addEventListener("click", hideSignIn);
  renderCredKind();
  try {
    const res = await authFetch("/whoami", { cache: "no-store" });
    if (res.ok) applyWho(await res.json());
    // 401: onAuth has opened the sign-in box. 404: a server without authentication.
  } catch (_) { /* unreachable: the rest of the page says so */ }
}

// ---------------------------------------------------------------- operations (admins)

// The operator's view: GET /admin/overview every OPS_POLL_MS while the tab is open and the
// page visible (never in the background), the last OPS_SAMPLES answers kept here for the
// sparklines. Absent figures (events/s and delivery lag need the metrics) show "—".
const OPS_POLL_MS = 2000;
const OPS_SAMPLES = 60;
const OPS_WINDOW_S = (OPS_SAMPLES * OPS_POLL_MS) / 1000; // what a sparkline spans
const OPS_GAP_S = (3 * OPS_POLL_MS) / 1000; // samples further apart: the line breaks
const SVG_NS = "http://www.w3.org/2000/svg";

const ops = {
  samples: [], // [{t, data}], oldest first; t is the server's ts
  timer: null,
  gen: 0, // each poll chain's generation: starting one retires the one before
  error: null, // the last poll's failure; null after a success
  built: false,
  el: {},
};
state.ops = ops;
state.tab = "runs";

function isAdmin(who) {
  return !!who && Array.isArray(who.roles) && who.roles.includes("admin");
}

function fmtRate(v) {
  if (!Number.isFinite(v)) return "—";
  return v < 10 ? v.toFixed(1) : fmtNum(Math.round(v));
}

function fmtLag(s) {
  if (!Number.isFinite(s)) return "—";
  if (s < 1) return `${Math.max(0, Math.round(s * 1000))} ms`;
  return s < 10 ? `${s.toFixed(2)} s` : fmtDuration(s);
}

const fmtCount = (v) => (Number.isFinite(v) ? fmtNum(v) : "—");

/** The tabs show for admins only (with auth "none" everyone is one). */
function renderTabs() {
  const admin = isAdmin(state.auth.who);
  $("#tabbar").hidden = !admin;
  const runs = $("#view-runs");
  if (admin) {
    runs.setAttribute("role", "tabpanel");
    runs.setAttribute("aria-labelledby", "tab-runs");
  } else {
    runs.removeAttribute("role");
    runs.removeAttribute("aria-labelledby");
  }
  if (!admin && state.wantOps && state.auth.who) {
    // #view=ops asked for a tab this caller does not get: the answer is no, and the link says so.
    state.wantOps = false;
    writeHash(state.runId);
  }
  if (!admin && state.tab === "ops") selectTab("runs");
  else if (admin && state.wantOps) {
    state.wantOps = false;
    selectTab("ops");
  }
}

function selectTab(tab, { focus = false } = {}) {
  if (tab === "ops" && !isAdmin(state.auth.who)) tab = "runs";
  const changed = tab !== state.tab;
  state.tab = tab;
  for (const b of document.querySelectorAll("#tablist [role='tab']")) {
    const on = b.dataset.tab === tab;
    b.setAttribute("aria-selected", String(on));
    b.tabIndex = on ? 0 : -1;
    if (on && focus) b.focus();
  }
  $("#view-runs").hidden = tab !== "runs";
  $("#view-ops").hidden = tab !== "ops";
  if (tab === "ops") {
    if (location.hash !== "#view=ops") history.replaceState(null, "", "#view=ops");
    buildOps();
    if (changed || !ops.timer) startOps();
  } else {
    stopOps();
    if (changed) {
      writeHash(state.runId);
      refreshRuns();
    }
  }
}

function onTabKey(e) {
  const tabs = Array.from(document.querySelectorAll("#tablist [role='tab']"));
  const i = tabs.indexOf(document.activeElement);
  if (i < 0) return;
  let j = null;
  if (e.key === "ArrowRight") j = (i + 1) % tabs.length;
  else if (e.key === "ArrowLeft") j = (i - 1 + tabs.length) % tabs.length;
  else if (e.key === "Home") j = 0;
  else if (e.key === "End") j = tabs.length - 1;
  if (j === null) return;
  e.preventDefault();
  selectTab(tabs[j].dataset.tab, { focus: true });
}

function opsActive() {
  return state.tab === "ops" && !document.hidden && isAdmin(state.auth.who);
}

function startOps() {
  stopOps();
  if (!opsActive()) {
    renderOpsState();
    return;
  }
  pollOps(ops.gen);
}

function stopOps() {
  ops.gen += 1;
  clearTimeout(ops.timer);
  ops.timer = null;
}

async function pollOps(gen) {
  if (gen !== ops.gen || !opsActive()) return;
  let again = true;
  try {
    const data = await api("GET", "/admin/overview");
    if (gen !== ops.gen) return; // a newer chain (or none) owns the view now
    ops.error = null;
    const t = Number.isFinite(data.ts) ? data.ts : Date.now() / 1000;
    ops.samples.push({ t, data });
    if (ops.samples.length > OPS_SAMPLES) ops.samples.splice(0, ops.samples.length - OPS_SAMPLES);
    renderOps();
  } catch (err) {
    if (gen !== ops.gen) return;
    ops.error = err;
    // 403: this credential is no admin's (any more); asking again changes nothing.
    again = err.status !== 403;
  }
  renderOpsState();
  if (again && gen === ops.gen && opsActive()) ops.timer = setTimeout(() => pollOps(gen), OPS_POLL_MS);
}

function onVisibility() {
  if (state.tab !== "ops") return;
  if (document.hidden) {
    stopOps();
    renderOpsState();
  } else {
    startOps();
  }
}

// -------------------------------------------------- building the view

function buildOps() {
  if (ops.built) return;
  ops.built = true;
  const el = ops.el;
  el.backend = h("span", { class: "chip ops-backend", "data-testid": "ops-backend" }, "backend …");
  el.state = h("span", { class: "ops-state", role: "status", "data-testid": "ops-state" }, "Loading…");
  el.asof = h("span", { class: "ops-asof", "data-testid": "ops-asof" });
  el.error = h("p", { class: "notice notice-error", role: "alert", hidden: true, "data-testid": "ops-error" });
  el.cards = h("dl", { class: "ops-cards", "data-testid": "ops-totals" });
  el.tenants = h("tbody", { role: "rowgroup" });
  el.tenantsEmpty = h("p", { class: "ops-empty", hidden: true }, "No tenant has queued or running runs.");
  el.tenantCount = h("span", { class: "ops-count" });
  el.agents = h("tbody", { role: "rowgroup" });
  el.agentCount = h("span", { class: "ops-count" });

  const th = (label, cls) => h("th", { scope: "col", role: "columnheader", class: cls }, label);
  const head = (...cols) => h("thead", { role: "rowgroup" }, h("tr", { role: "row" }, ...cols));
  const tenantTable = h("table", { class: "ops-table ops-tenants", role: "table", "aria-labelledby": "ops-tenants-h",
    "data-testid": "ops-tenants" },
  head(th("Tenant"), th("Queued", "num"), th("Oldest wait", "num"), th("Running / cap", "num"),
    th("Weight", "num"), th("By agent")),
  el.tenants);
  const agentTable = h("table", { class: "ops-table ops-agents", role: "table", "aria-labelledby": "ops-agents-h",
    "data-testid": "ops-agents" },
  head(th("Agent"), th("Workers", "num"), th("Queued", "num"), th("Running", "num"), th("Coverage")),
  el.agents);

  $("#view-ops").replaceChildren(h("div", { class: "ops-inner" },
    h("header", { class: "ops-head" },
      h("div", { class: "ops-title" },
        h("h1", {}, "Operations"),
        h("p", { class: "ops-lede" },
          `Queues, running runs and workers across every tenant, refreshed every ${OPS_POLL_MS / 1000} s while this tab is open.`)),
      h("div", { class: "ops-meta" }, el.backend, el.state, el.asof)),
    el.error,
    h("section", { class: "ops-section", "aria-labelledby": "ops-totals-h" },
      h("h2", { class: "ops-h2", id: "ops-totals-h" }, "Totals"),
      el.cards),
    h("section", { class: "panel ops-section", "aria-labelledby": "ops-tenants-h" },
      h("div", { class: "panel-head" }, h("h2", { id: "ops-tenants-h" }, "Tenants"), el.tenantCount),
      tenantTable, el.tenantsEmpty),
    h("section", { class: "panel ops-section", "aria-labelledby": "ops-agents-h" },
      h("div", { class: "panel-head" }, h("h2", { id: "ops-agents-h" }, "Workers per agent"), el.agentCount),
      agentTable)));
  renderOpsState();
}

/** The live/paused/error line (a polite status: it changes rarely, not on every tick). */
function renderOpsState() {
  if (!ops.built) return;
  const el = ops.el;
  let phase;
  let text;
  if (ops.error && ops.error.status === 403) {
    phase = "error";
    text = "Not allowed: the admin role is needed";
  } else if (ops.error) {
    phase = "error";
    text = ops.samples.length ? "Cannot refresh — showing the last answer" : "Cannot load the overview";
  } else if (state.tab === "ops" && document.hidden) {
    phase = "paused";
    text = "Paused in the background";
  } else if (!ops.samples.length) {
    phase = "loading";
    text = "Loading…";
  } else {
    phase = "live";
    text = `Live · every ${OPS_POLL_MS / 1000} s`;
  }
  el.state.dataset.phase = phase;
  if (el.state.textContent !== text) el.state.textContent = text;
  el.error.hidden = !ops.error;
  if (ops.error) {
    const msg = `GET /admin/overview: ${ops.error.message || ops.error}`;
    if (el.error.textContent !== msg) el.error.textContent = msg;
  }
}

/** Figures over the kept samples: [{t, v}], v null where the figure had no value. */
function seriesOf(fn) {
  return ops.samples.map((s) => {
    const v = fn(s.data);
    return { t: s.t, v: Number.isFinite(v) ? v : null };
  });
}

function sparkline(points, label, kind) {
  const W = 96;
  const H = 26;
  const PAD = 3;
  const s = document.createElementNS(SVG_NS, "svg");
  s.setAttribute("viewBox", `0 0 ${W} ${H}`);
  s.setAttribute("class", `spark spark-${kind}`);
  s.setAttribute("data-testid", "sparkline");
  s.setAttribute("role", "img");
  const add = (tag, attrs) => {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    s.append(e);
    return e;
  };
  add("line", { class: "spark-base", x1: 0, x2: W, y1: H - PAD, y2: H - PAD });
  const tEnd = points.length ? points[points.length - 1].t : 0;
  const shown = points.filter((p) => p.t >= tEnd - OPS_WINDOW_S);
  // The line spans the history there is (at least ten polls), up to the whole window.
  const span = Math.min(OPS_WINDOW_S, Math.max(shown.length ? tEnd - shown[0].t : 0, (10 * OPS_POLL_MS) / 1000));
  const vals = shown.filter((p) => p.v !== null).map((p) => p.v);
  s.dataset.samples = String(vals.length);
  if (!vals.length) {
    s.setAttribute("aria-label", `${label}: no data yet`);
    return s;
  }
  const lo = Math.min(...vals);
  const hi = Math.max(...vals);
  const fmt = kind === "age" ? fmtDuration : kind === "lag" ? fmtLag : kind === "rate" ? fmtRate : fmtCount;
  s.setAttribute("aria-label", `${label} over the last ${Math.round(OPS_WINDOW_S / 60)} min: `
    + `${fmt(lo)} to ${fmt(hi)}, now ${fmt(vals[vals.length - 1])}`);
  // Counts scale from 0 to at least 1 (a flat 0 sits on the base line); seconds to their max.
  const top = kind === "count" || kind === "running" ? Math.max(hi, 1) : hi > 0 ? hi : 1;
  const x = (t) => (W - 2) - ((tEnd - t) / span) * (W - 4);
  const y = (v) => H - PAD - (v / top) * (H - 2 * PAD);
  const segments = [];
  let cur = [];
  let prev = null;
  for (const p of shown) {
    if (p.v === null || (prev && p.t - prev.t > OPS_GAP_S)) {
      if (cur.length) segments.push(cur);
      cur = [];
    }
    if (p.v !== null) cur.push([x(p.t), y(p.v)]);
    prev = p;
  }
  if (cur.length) segments.push(cur);
  for (const seg of segments) {
    if (seg.length < 2) continue;
    const line = seg.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" ");
    add("path", { class: "spark-area",
      d: `M${seg[0][0].toFixed(1)},${H - PAD} L${line.replaceAll(" ", " L")} L${seg[seg.length - 1][0].toFixed(1)},${H - PAD} Z` });
    add("polyline", { class: "spark-line", points: line });
  }
  const last = segments[segments.length - 1];
  const [lx, ly] = last[last.length - 1];
  add("circle", { class: "spark-dot", cx: lx.toFixed(1), cy: ly.toFixed(1), r: 2.2 });
  return s;
}

/** A number (data-value: the raw figure, for tests and copy-paste) with its sparkline. */
function figure(value, text, points, label, kind, attrs = {}) {
  return h("span", { class: "ops-fig" },
    h("span", { class: "ops-num", "data-value": value === null || value === undefined ? "" : String(value), ...attrs }, text),
    sparkline(points, label, kind));
}

const cell = (label, cls, ...kids) => h("td", { role: "cell", "data-label": label, class: cls }, ...kids);
const muted = (text) => h("span", { class: "ops-muted" }, text);
const asCount = (x) => (Number.isFinite(Number(x)) ? Number(x) : 0);
const WARN_ICON = '<path d="M10 3.5l7 12.5H3z"/><path d="M10 8.5v3.2M10 14h.01"/>';

function renderOps() {
  buildOps();
  const latest = ops.samples[ops.samples.length - 1];
  if (!latest) return;
  const d = latest.data;
  const el = ops.el;
  const be = d.backend || {};
  el.backend.dataset.up = String(be.up !== false);
  el.backend.replaceChildren(h("span", { class: "ops-dot", "aria-hidden": "true" }),
    `${be.name || "backend"} · ${be.up === false ? "down" : "up"}`);
  el.backend.title = be.up === false ? "The event bus backend does not answer" : "The event bus backend answers";
  const clock = new Date(latest.t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  el.asof.textContent = `as of ${clock}`;
  renderOpsTotals(d);
  renderOpsTenants(d);
  renderOpsAgents(d);
}

const oldestWait = (d) => {
  const ages = Object.values(d.tenants || {}).map((t) => t.oldest_age_s).filter(Number.isFinite);
  return ages.length ? Math.max(...ages) : null;
};
const workerTotal = (d) => Object.values(d.workers || {}).reduce((n, w) => n + asCount(w), 0);

const TOTALS = {
  queued: (d) => d.queued_total,
  running: (d) => d.running_total,
  workers: workerTotal,
  events_per_s: (d) => d.events_per_s,
  delivery_lag_p99_s: (d) => d.delivery_lag_p99_s,
};

function renderOpsTotals(d) {
  const uncovered = agentsOf(d).filter((a) => !covered(d.workers || {}, a));
  const oldest = oldestWait(d);
  const reported = (k) => Object.prototype.hasOwnProperty.call(d, k);
  const card = (key, label, fmt, kind, sub, cls = null) => {
    const v = TOTALS[key](d);
    return h("div", { class: cls ? `ops-card ${cls}` : "ops-card", "data-card": key },
      h("dt", {}, label),
      h("dd", {},
        figure(v ?? null, fmt(v), seriesOf(TOTALS[key]), label, kind, { "data-total": key }),
        h("span", { class: "ops-sub" }, sub)));
  };
  const slots = Number.isFinite(d.slots) ? `of ${fmtNum(d.slots)} slot${d.slots === 1 ? "" : "s"}` : "across every worker";
  const none = uncovered.length === 1 ? "1 agent has none" : `${uncovered.length} agents have none`;
  ops.el.cards.replaceChildren(
    card("queued", "Queued", fmtCount, "count", oldest === null ? "nothing waits" : `oldest ${fmtDuration(oldest)}`),
    card("running", "Running", fmtCount, "count", slots),
    card("workers", "Workers", fmtCount, "count", uncovered.length ? none : "every agent served",
      uncovered.length ? "is-warn" : null),
    card("events_per_s", "Events / s", fmtRate, "rate", reported("events_per_s") ? "published" : "not reported"),
    card("delivery_lag_p99_s", "Delivery lag p99", fmtLag, "lag",
      reported("delivery_lag_p99_s") ? "publish to client" : "not reported"));
}

/** The tenants of the last answer, and those that drained within the window (shown at 0). */
function opsTenants(d) {
  const rows = { ...(d.tenants || {}) };
  for (const s of ops.samples) {
    for (const [name, t] of Object.entries(s.data.tenants || {})) {
      if (!rows[name] && (t.queued || t.running)) {
        rows[name] = { queued: 0, running: 0, oldest_age_s: null, cap: t.cap, weight: t.weight, by_agent: {} };
      }
    }
  }
  const load = (t) => asCount(t.queued) + asCount(t.running);
  return Object.entries(rows).sort(([a, ta], [b, tb]) => load(tb) - load(ta) || a.localeCompare(b));
}

function renderOpsTenants(d) {
  const el = ops.el;
  const rows = opsTenants(d);
  const busy = rows.filter(([, t]) => t.queued || t.running).length;
  el.tenantCount.textContent = `${busy} busy of ${rows.length}`;
  el.tenantsEmpty.hidden = rows.length > 0;
  el.tenants.replaceChildren(...rows.map(([name, t]) => {
    const pick = (f) => seriesOf((x) => {
      const r = (x.tenants || {})[name];
      return r ? r[f] : (f === "oldest_age_s" ? null : 0);
    });
    const cap = Number.isFinite(t.cap) ? t.cap : null;
    const atCap = cap !== null && t.running >= cap;
    const capTitle = cap === null ? "no cap of its own: the workers' slots are the limit"
      : atCap ? "at its cap: its other runs wait" : null;
    const running = h("span", { class: "ops-fig" },
      h("span", { class: "ops-num ops-running", title: capTitle },
        h("span", { "data-field": "running", "data-value": String(t.running) }, fmtCount(t.running)),
        h("span", { class: "ops-cap", "data-field": "cap", "data-value": cap === null ? "" : String(cap) },
          cap === null ? " / no cap" : ` / ${fmtNum(cap)}`)),
      sparkline(pick("running"), `${name} running`, "running"));
    const agents = Object.entries(t.by_agent || {}).sort(([a], [b]) => a.localeCompare(b));
    const byAgent = agents.length
      ? h("ul", { class: "ops-agent-list" }, ...agents.map(([a, c]) => h("li", {},
        h("code", {}, a), ` ${fmtNum(asCount(c.queued))} queued · ${fmtNum(asCount(c.running))} running`)))
      : muted("—");
    return h("tr", { role: "row", "data-testid": "ops-tenant", "data-tenant": name, class: atCap ? "at-cap" : null },
      h("th", { scope: "row", role: "rowheader" }, h("span", { class: "ops-tenant" }, name)),
      cell("Queued", "num", figure(t.queued, fmtCount(t.queued), pick("queued"), `${name} queued`, "count",
        { "data-field": "queued" })),
      cell("Oldest wait", "num", figure(t.oldest_age_s, fmtDuration(t.oldest_age_s ?? NaN), pick("oldest_age_s"),
        `${name} oldest wait`, "age", { "data-field": "oldest" })),
      cell("Running / cap", "num", running),
      cell("Weight", "num", h("span", { class: "ops-num", "data-field": "weight" }, fmtCount(t.weight))),
      cell("By agent", "ops-by-agent", byAgent));
  }));
}

/** Workers per agent: an agent is served when a worker takes it, or a "*" worker takes all. */
function renderOpsAgents(d) {
  const workers = d.workers || {};
  const any = asCount(workers["*"]);
  const perAgent = (x, a, f) => Object.values(x.tenants || {})
    .reduce((n, t) => n + asCount(((t.by_agent || {})[a] || {})[f]), 0);
  const rows = [];
  if ("*" in workers) {
    rows.push(h("tr", { role: "row", "data-testid": "ops-agent", "data-agent": "*", "data-covered": "true" },
      h("th", { scope: "row", role: "rowheader" }, h("code", {}, "*"), muted(" any agent")),
      cell("Workers", "num", figure(any, fmtCount(any), seriesOf((x) => asCount((x.workers || {})["*"])),
        "workers for any agent", "count", { "data-field": "workers" })),
      cell("Queued", "num", muted("—")),
      cell("Running", "num", muted("—")),
      cell("Coverage", null, h("span", { class: "ops-badge", "data-ok": "true" }, "takes every agent"))));
  }
  const agents = agentsOf(d);
  for (const a of agents) {
    const own = asCount(workers[a]);
    const ok = own > 0 || any > 0;
    const able = (x) => asCount((x.workers || {})[a]) + asCount((x.workers || {})["*"]);
    const q = perAgent(d, a, "queued");
    const r = perAgent(d, a, "running");
    const badge = ok
      ? h("span", { class: "ops-badge", "data-ok": "true" },
        own > 0 ? `${own} dedicated${any ? ` + ${any} any` : ""}` : `served by ${any} any-agent`)
      : h("span", { class: "ops-badge", "data-ok": "false" }, svg(WARN_ICON),
        q ? `no worker · ${fmtNum(q)} waiting` : "no worker");
    rows.push(h("tr", { role: "row", "data-testid": "ops-agent", "data-agent": a, "data-covered": String(ok),
      class: ok ? null : "uncovered" },
    h("th", { scope: "row", role: "rowheader" }, h("code", {}, a)),
    cell("Workers", "num", figure(own + any, fmtCount(own + any), seriesOf(able), `${a} workers`, "count",
      { "data-field": "workers", title: "live workers that take this agent (its own and any-agent ones)" })),
    cell("Queued", "num", figure(q, fmtCount(q), seriesOf((x) => perAgent(x, a, "queued")), `${a} queued`, "count",
      { "data-field": "queued" })),
    cell("Running", "num", figure(r, fmtCount(r), seriesOf((x) => perAgent(x, a, "running")), `${a} running`,
      "running", { "data-field": "running" })),
    cell("Coverage", null, badge)));
  }
  const uncovered = agents.filter((a) => !covered(workers, a)).length;
  ops.el.agentCount.textContent = uncovered ? `${uncovered} without a worker` : `${agents.length} served`;
  ops.el.agentCount.dataset.warn = String(uncovered > 0);
  ops.el.agents.replaceChildren(...rows);
}

function covered(workers, agent) {
  return asCount(workers[agent]) > 0 || asCount(workers["*"]) > 0;
}

/** Every agent the overview mentions: registered, given a worker, or with runs. */
function agentsOf(d) {
  const names = new Set(d.agents || []);
  for (const k of Object.keys(d.workers || {})) if (k !== "*") names.add(k);
  for (const t of Object.values(d.tenants || {})) for (const a of Object.keys(t.by_agent || {})) names.add(a);
  return [...names].sort();
}

// ---------------------------------------------------------------- start

async function main() {
  const fromHash = readHash();
  state.transport = fromHash.transport === "sse" || fromHash.transport === "socketio"
    ? fromHash.transport : (localStorage.getItem("ts.transport") === "sse" ? "sse" : "socketio");
  localStorage.setItem("ts.transport", state.transport);
  renderTransport();
  setConn("idle");

  $("#transport-switch").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-transport]");
    if (b && !b.disabled) setTransport(b.dataset.transport);
  });
  $("#agent-select").addEventListener("change", (e) => {
    localStorage.setItem("ts.agent", e.target.value);
    renderAgentForm(state.agents.find((a) => a.name === e.target.value));
    showFormError(null);
  });
  $("#run-form").addEventListener("submit", submitRun);
  $("#refresh-runs").addEventListener("click", () => { state.runsKey = ""; refreshRuns(); });
  $(".brand").addEventListener("click", (e) => {
    e.preventDefault();
    selectTab("runs");
    goHome();
  });
  window.addEventListener("hashchange", () => {
    const { run, view } = readHash();
    if (view === "ops") {
      if (isAdmin(state.auth.who)) selectTab("ops");
      return;
    }
    if (state.tab === "ops") selectTab("runs");
    if (run && run !== state.runId) openRun(run);
  });
  $("#tablist").addEventListener("click", (e) => {
    const b = e.target.closest("[role='tab']");
    if (b) selectTab(b.dataset.tab);
  });
  $("#tablist").addEventListener("keydown", onTabKey);
  document.addEventListener("visibilitychange", onVisibility);
  // #view=ops opens the Operations tab once we know the caller is an admin.
  state.wantOps = fromHash.view === "ops";

  await initAuth();
  initCtxForm();
  setCtxKey(ctxKeyOfForm());

  // Know whether Socket.IO can work before the first watch picks a transport.
  const probe = state.transport === "socketio" ? await probeSocketIO() : null;
  if (probe) markSocketIO(probe.ok, probe.error);
  else probeSocketIO().then((p) => markSocketIO(p.ok, p.error));

  await loadAgents();
  refreshRuns();
  setInterval(() => { if (!document.hidden && state.tab === "runs") refreshRuns(); }, 3000);
  if (fromHash.run) openRun(fromHash.run);
}

main();

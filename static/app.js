// The thoughtstream viewer: start runs, list them, watch one live.
// Plain ES module; the stream logic (resync, dedup, rewind) lives in client.js.

import { watchRun, probeSocketIO, TERMINAL_STATES } from "./client.js";

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
};

async function api(method, path, body) {
  const res = await fetch(path, {
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
const META_NS = new Set(["STATUS", "STEP", "RESULT", "ERROR"]);
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
        h("div", { class: "run-ident" }, this.agentEl, this.idEl),
        h("div", { class: "run-actions" }, this.attemptChip, this.statusEl, this.cancelBtn)),
      this.titleEl,
      h("div", { class: "metrics" },
        metric("steps", "steps"), metric("events", "events"), metric("chunks", "chunks"),
        metric("rate", "tokens / s"), metric("elapsed", "elapsed")),
      this.progressBar,
      this.progressEl);
    this.noticesEl = h("div", { class: "notices" });
    this.askEl = h("section", { class: "ask", hidden: true, "data-testid": "interrupt" });
    this.answerEl = h("section", { class: "answer", hidden: true, "data-testid": "answer" });
    this.lanesEl = h("div", { class: "lanes" });
    this.root.append(head, this.noticesEl, this.askEl, this.answerEl, this.lanesEl);
  }

  setRecord(run) {
    if (!run) return;
    this.agentEl.textContent = run.agent;
    const summary = inputSummary(run.input);
    this.titleEl.textContent = summary || `Run ${run.run_id}`;
    this.titleEl.title = summary;
    if (this.events === 0 && run.status) this.setStatus(run.status);
  }

  // -------------------------------------------------- applying events

  rebuild(events) {
    this.resetModel();
    for (const ev of events) this.apply(ev, true);
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
    el.replaceChildren(
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
    this.result = ev.data.output;
    const out = ev.data.output;
    const el = this.answerEl;
    el.hidden = false;
    el.replaceChildren();
    el.append(h("div", { class: "answer-label" }, svg(ICONS.check), "Answer"));
    if (out && typeof out === "object" && typeof out.answer === "string") {
      el.append(h("p", { class: "answer-text", "data-testid": "answer-text" }, out.answer));
      const meta = h("div", { class: "answer-meta" });
      for (const [k, v] of Object.entries(out)) {
        if (k === "answer") continue;
        let shown = typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : typeof v === "object" ? JSON.stringify(v) : String(v);
        if (shown.length > 60) shown = shown.slice(0, 57) + "…";
        meta.append(h("span", { class: "chip" }, h("b", {}, k), " ", shown));
      }
      if (meta.childElementCount) el.append(meta);
    } else if (typeof out === "string") {
      el.append(h("p", { class: "answer-text", "data-testid": "answer-text" }, out));
    } else if (out && typeof out === "object" && !Array.isArray(out)) {
      el.firstChild.lastChild.textContent = "Result";
      const dl = h("dl", { class: "kv", "data-testid": "answer-text" });
      for (const [k, v] of Object.entries(out)) {
        dl.append(h("dt", {}, k), h("dd", {}, typeof v === "string" ? clip(v) : h("code", {}, clip(JSON.stringify(v)))));
      }
      el.append(dl);
    } else {
      el.firstChild.lastChild.textContent = "Result";
      el.append(h("pre", { class: "json answer-json", "data-testid": "answer-text" }, clip(prettyJSON(out), 4000)));
    }
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
      st.replaceChildren(svg(ok ? ICONS.check : ICONS.cross), ok ? "ok" : "error",
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
    el.replaceChildren(
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
  return { run: p.get("run"), transport: p.get("transport") };
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
    if (state.view === view) view.setRecord(run);
  }, (err) => {
    if (state.view === view && err.status === 404) view.notice("error", "Unknown run.", "This server does not know that run id.");
  });
  startWatch(view);
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
  let data;
  try {
    data = await api("GET", "/runs?limit=30");
  } catch (_) {
    return;
  }
  const runs = data.runs || [];
  const key = JSON.stringify(runs.map((r) => [r.run_id, r.status, r.progress && r.progress.steps]));
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
    const res = await api("POST", "/runs", { agent, input });
    await openRun(res.run_id);
    refreshRuns();
  } catch (err) {
    showFormError(err);
  } finally {
    btn.disabled = false;
    btn.classList.remove("busy");
  }
}

async function loadAgents() {
  try {
    const data = await api("GET", "/agents");
    state.agents = data.agents || [];
  } catch (err) {
    showFormError(new Error(`Could not load agents: ${err.message}`));
    return;
  }
  const sel = $("#agent-select");
  sel.replaceChildren(...state.agents.map((a) => h("option", { value: a.name }, a.name)));
  const saved = localStorage.getItem("ts.agent");
  if (saved && state.agents.some((a) => a.name === saved)) sel.value = saved;
  renderAgentForm(state.agents.find((a) => a.name === sel.value));
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
    closeRun();
    writeHash(null);
    $("#run-slot").replaceChildren();
    $("#empty").hidden = false;
    markActiveRun();
  });
  window.addEventListener("hashchange", () => {
    const { run } = readHash();
    if (run && run !== state.runId) openRun(run);
  });

  // Know whether Socket.IO can work before the first watch picks a transport.
  const probe = state.transport === "socketio" ? await probeSocketIO() : null;
  if (probe) markSocketIO(probe.ok, probe.error);
  else probeSocketIO().then((p) => markSocketIO(p.ok, p.error));

  await loadAgents();
  refreshRuns();
  setInterval(() => { if (!document.hidden) refreshRuns(); }, 3000);
  if (fromHash.run) openRun(fromHash.run);
}

main();

// Shared by the node scripts of tests/js: arguments, a seeded PRNG, reading an SDK stream
// with a cut, folding a resumed run's rewind, and comparing what a client got with a replay.
// Every script prints one JSON document on stdout (tests/integration/test_lg_js_sdk.py reads it).

import { Client } from "@langchain/langgraph-sdk";

export const MODES = ["custom", "updates", "values"];

export function parseArgs(argv, defaults) {
  const [url, ...rest] = argv;
  if (!url) throw new Error("usage: node script.mjs URL [--flag value ...]");
  const opts = { ...defaults };
  for (let i = 0; i < rest.length; i += 1) {
    const key = rest[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in defaults)) throw new Error(`unknown flag ${rest[i]}`);
    const d = defaults[key];
    if (typeof d === "boolean") opts[key] = true;
    else {
      const v = rest[(i += 1)];
      opts[key] = typeof d === "number" ? Number(v) : v;
    }
  }
  return { url, opts };
}

// mulberry32: a failing seed reproduces the same cuts
export function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)) };
}

export function client(url, apiKey) {
  return new Client({ apiUrl: url, apiKey: apiKey || undefined, timeoutMs: 30000 });
}

export const plain = (part) => ({ id: part.id ?? null, event: part.event, data: part.data ?? null });

/**
 * Iterate ``iterable`` (an SDK stream) until ``limit`` parts arrived (then abort ``ac``: the
 * connection is cut) or the stream ends; ``timeoutMs`` without the stream ending is a hang.
 * Returns {parts, cut, ended, hung, error}.
 */
export async function readSome(makeIterable, { limit = Infinity, timeoutMs = 30000 } = {}) {
  const ac = new AbortController();
  let hung = false;
  const timer = setTimeout(() => {
    hung = true;
    ac.abort(new Error("timeout"));
  }, timeoutMs);
  const parts = [];
  let cut = false;
  let error = null;
  try {
    for await (const part of makeIterable(ac.signal)) {
      parts.push(plain(part));
      if (parts.length >= limit && part.event !== "end") {
        cut = true;
        ac.abort(new Error("cut"));
        break;
      }
    }
  } catch (err) {
    if (!cut && !hung) error = String(err?.stack || err);
  } finally {
    clearTimeout(timer);
  }
  const ended = parts.length > 0 && parts[parts.length - 1].event === "end";
  return { parts, cut, ended, hung: hung && !ended, error };
}

/**
 * The client-side fold of a resumed run: a ``metadata`` event with ``rewind_to`` means the
 * events after that id were sent again by a new attempt, so the copies already received
 * (id > rewind_to) are dropped before the new ones are appended. Metadata events are kept
 * apart (each connection starts with one).
 */
export function fold(segments) {
  const events = [];
  const metadata = [];
  for (const seg of segments) {
    for (const p of seg) {
      if (p.event === "metadata") {
        metadata.push(p);
        const rewind = p.data && p.data.rewind_to;
        if (rewind !== undefined && rewind !== null) {
          while (events.length && Number(events[events.length - 1].id) > Number(rewind)) events.pop();
        }
        continue;
      }
      events.push(p);
    }
  }
  return { events, metadata };
}

/** Missing, duplicated and out-of-order events of ``got`` against ``ref`` (both by id). */
export function compare(got, ref) {
  const key = (p) => `${p.id}`;
  const refIds = ref.map(key);
  const refSet = new Set(refIds);
  const seen = new Map();
  let duplicates = 0;
  for (const p of got) {
    const k = key(p);
    seen.set(k, (seen.get(k) || 0) + 1);
    if (seen.get(k) > 1) duplicates += 1;
  }
  const missing = refIds.filter((k) => !seen.has(k));
  const extra = [...seen.keys()].filter((k) => !refSet.has(k));
  let reordered = 0;
  const firsts = [];
  const done = new Set();
  for (const p of got) {
    const k = key(p);
    if (!done.has(k) && refSet.has(k)) firsts.push(k);
    done.add(k);
  }
  const order = firsts.map((k) => refIds.indexOf(k));
  for (let i = 1; i < order.length; i += 1) if (order[i] < order[i - 1]) reordered += 1;
  // same id, different event or data: the log answered two readers differently
  const byId = new Map(ref.map((p) => [key(p), p]));
  const differing = got
    .filter((p) => byId.has(key(p)))
    .filter((p) => JSON.stringify([p.event, p.data]) !== JSON.stringify([byId.get(key(p)).event, byId.get(key(p)).data]))
    .map((p) => ({ got: p, replay: byId.get(key(p)) }));
  return { missing: missing.length, missingIds: missing, duplicates, extra, reordered, differing: differing.slice(0, 5) };
}

export function emit(doc) {
  process.stdout.write(JSON.stringify(doc) + "\n");
}

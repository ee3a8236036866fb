// The JS SDK's apiKey (sent as X-Api-Key) on a server with API keys: a tenant's own
// thread, run and streams work; another tenant's are 404 (they do not exist for it); no
// key is 401.
//
//   node tests/js/tenants.mjs URL --api-key KEY_A --other-key KEY_B [--assistant chaos]
//
// Prints {own: {...}, other: {...}, anonymous: {...}}: each call's outcome, an HTTP status
// for the failures.

import { MODES, client as makeClient, emit, parseArgs, readSome } from "./lib.mjs";

const { url, opts } = parseArgs(process.argv.slice(2), { apiKey: "", otherKey: "", assistant: "chaos" });
const own = makeClient(url, opts.apiKey);
const other = makeClient(url, opts.otherKey);
// no key at all: the SDK would read LANGGRAPH_API_KEY and friends from the environment, so clear it
const anonymous = makeClient(url, undefined);

const outcome = async (fn) => {
  try {
    const value = await fn();
    return { ok: true, value };
  } catch (err) {
    return { ok: false, status: err?.status ?? null, error: String(err).slice(0, 300) };
  }
};
const streamOutcome = async (make) => {
  const seg = await readSome(make, { timeoutMs: 15000 });
  return seg.error ? { ok: false, status: /HTTP (\d+)/.exec(seg.error)?.[1] ? Number(/HTTP (\d+)/.exec(seg.error)[1]) : null, error: seg.error.slice(0, 300) }
    : { ok: true, events: seg.parts.map((p) => p.event), ended: seg.ended };
};

const thread = await own.threads.create();
const tid = thread.thread_id;
const stream = await streamOutcome((signal) => own.runs.stream(tid, opts.assistant, {
  input: { chunks: 2, delay_s: 0.01 }, streamMode: MODES, streamSubgraphs: true, signal,
}));
const runs = await own.runs.list(tid);
const runId = runs[0]?.run_id;
const doc = {
  own: {
    stream,
    thread: await outcome(async () => (await own.threads.get(tid)).thread_id),
    run: await outcome(async () => (await own.runs.get(tid, runId)).status),
    join: await streamOutcome((signal) => own.runs.joinStream(tid, runId, { lastEventId: "-1", streamMode: MODES, signal })),
    search: await outcome(async () => (await own.threads.search({ limit: 100 })).map((t) => t.thread_id).includes(tid)),
  },
  other: {
    thread: await outcome(() => other.threads.get(tid)),
    run: await outcome(() => other.runs.get(tid, runId)),
    state: await outcome(() => other.threads.getState(tid)),
    join: await streamOutcome((signal) => other.runs.joinStream(tid, runId, { lastEventId: "-1", streamMode: MODES, signal })),
    search: await outcome(async () => (await other.threads.search({ limit: 100 })).map((t) => t.thread_id).includes(tid)),
  },
  anonymous: {
    thread: await outcome(() => anonymous.threads.get(tid)),
  },
  thread_id: tid,
  run_id: runId,
};
emit(doc);

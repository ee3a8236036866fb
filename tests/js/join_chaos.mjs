// The official JS SDK's cut-and-rejoin, exact: for each of --runs runs, client.runs.stream
// (custom + updates + values, streamSubgraphs) is cut (AbortSignal) after a random number
// of events, then client.runs.joinStream(thread, run, {lastEventId, streamMode}) is cut
// again, --cuts times in all, and a last join reads to `end`. What the client got, folded,
// must be the run's full replay (joinStream with lastEventId "-1" once the run is over):
// no event missing, duplicated or out of order. Also: a join of the finished run from a
// random id replays exactly the rest and ends at once (no hang).
//
//   node tests/js/join_chaos.mjs URL [--runs 5] [--cuts 5] [--seed N] [--chunks 8]
//        [--delay-s 0.03] [--max-gap 8] [--resumable] [--assistant chaos] [--api-key K]
//        [--join-urls URL2,...]
//
// Prints {seed, opts, runs: [{thread_id, run_id, on_run_created, segments, got, replay,
// compare, tail, errors}], ok}.

import { MODES, client as makeClient, compare, emit, fold, parseArgs, prng, readSome } from "./lib.mjs";

const { url, opts } = parseArgs(process.argv.slice(2), {
  runs: 5, cuts: 5, seed: 0, chunks: 8, delayS: 0.03, maxGap: 8, resumable: false,
  assistant: "chaos", apiKey: "", timeoutMs: 30000, joinUrls: "",
});
const seed = opts.seed || Math.floor(Math.random() * 2 ** 31);
const rnd = prng(seed);
const client = makeClient(url, opts.apiKey);
// --join-urls: other API processes (over Redis); the joins take turns: the 1st on the first of
// them, ..., then URL again; the replay is read from the last one
const joiners = [client, ...opts.joinUrls.split(",").filter(Boolean).map((u) => makeClient(u, opts.apiKey))];
const joiner = (k) => joiners[k % joiners.length];
const input = { chunks: opts.chunks, delay_s: opts.delayS };

async function oneRun() {
  const errors = [];
  const thread = await client.threads.create();
  const tid = thread.thread_id;
  let onRunCreated = null;
  const segments = [];
  let runId = null;
  let lastEventId;
  // the creating stream, cut after a random number of events
  const first = await readSome(
    (signal) => client.runs.stream(tid, opts.assistant, {
      input, streamMode: MODES, streamSubgraphs: true, streamResumable: opts.resumable,
      onDisconnect: "continue", signal,
      onRunCreated: (meta) => { onRunCreated = meta; },
    }),
    { limit: rnd.int(1, opts.maxGap), timeoutMs: opts.timeoutMs },
  );
  segments.push({ kind: "stream", after: null, ...first });
  const meta = first.parts.find((p) => p.event === "metadata");
  runId = onRunCreated?.run_id || meta?.data?.run_id;
  if (!runId) {
    return { thread_id: tid, run_id: null, on_run_created: onRunCreated, segments, errors: ["no run id: neither Content-Location nor a metadata event"] };
  }
  const lastId = (seg) => (seg.parts.length ? seg.parts[seg.parts.length - 1].id : undefined);
  // no id yet (cut after an id-less metadata event): from the start, as useStream does
  lastEventId = lastId(first) ?? "-1";
  let ended = first.ended;
  for (let cut = 1; !ended; cut += 1) {
    const limit = cut < opts.cuts ? rnd.int(1, opts.maxGap) : Infinity;
    const seg = await readSome(
      (signal) => joiner(cut).runs.joinStream(tid, runId, { lastEventId, streamMode: MODES, signal }),
      { limit, timeoutMs: opts.timeoutMs },
    );
    segments.push({ kind: "join", via: cut % joiners.length, after: lastEventId ?? null, ...seg });
    if (seg.error) errors.push(`join after ${lastEventId}: ${seg.error}`);
    if (seg.hung) { errors.push(`join after ${lastEventId} hung (${opts.timeoutMs} ms without end)`); break; }
    if (!seg.parts.length && !seg.ended) { errors.push(`join after ${lastEventId} closed with nothing`); break; }
    lastEventId = lastId(seg) ?? lastEventId;
    ended = seg.ended;
    if (cut > opts.cuts + 50) { errors.push("too many joins"); break; }
  }
  if (first.error) errors.push(`stream: ${first.error}`);
  const run = await client.runs.join(tid, runId).catch((e) => ({ error: String(e) }));
  const status = (await client.runs.get(tid, runId).catch(() => ({}))).status ?? null;
  const replaySeg = await readSome(
    (signal) => joiners[joiners.length - 1].runs.joinStream(tid, runId, { lastEventId: "-1", streamMode: MODES, signal }),
    { timeoutMs: opts.timeoutMs },
  );
  if (replaySeg.error || replaySeg.hung) errors.push(`replay: ${replaySeg.error || "hung"}`);
  const got = fold(segments.map((s) => s.parts));
  const replay = fold([replaySeg.parts]);
  // a finished run joined from a random id in the middle: the rest, then end, at once
  const mid = replay.events.length > 2 ? replay.events[rnd.int(0, replay.events.length - 2)].id : null;
  let tail = null;
  if (mid !== null) {
    const t0 = Date.now();
    const seg = await readSome(
      (signal) => joiner(1).runs.joinStream(tid, runId, { lastEventId: String(mid), streamMode: MODES, signal }),
      { timeoutMs: 10000 },
    );
    const tailEvents = fold([seg.parts]).events;
    const want = replay.events.slice(replay.events.findIndex((p) => p.id === mid) + 1);
    tail = { after: mid, ms: Date.now() - t0, ended: seg.ended, hung: seg.hung, error: seg.error,
             compare: compare(tailEvents, want), count: tailEvents.length, want: want.length };
  }
  return {
    thread_id: tid, run_id: runId, status, join_result_keys: run && typeof run === "object" ? Object.keys(run) : null,
    on_run_created: onRunCreated,
    segments: segments.map(({ kind, via, after, parts, cut, ended: e, hung }) => ({ kind, via: via ?? 0, after, count: parts.length, ids: parts.map((p) => p.id), cut, ended: e, hung })),
    got: got.events, got_metadata: got.metadata, replay: replay.events, replay_metadata: replay.metadata,
    compare: compare(got.events, replay.events), tail, errors,
  };
}

const runs = [];
for (let i = 0; i < opts.runs; i += 1) {
  try {
    runs.push(await oneRun());
  } catch (err) {
    runs.push({ errors: [String(err?.stack || err)] });
  }
}
const ok = runs.every((r) => !r.errors.length && r.compare && r.compare.missing === 0 && r.compare.duplicates === 0
  && r.compare.reordered === 0 && !r.compare.extra.length && !r.compare.differing.length && r.tail
  && r.tail.ended && r.tail.compare.missing === 0 && r.tail.compare.duplicates === 0 && !r.tail.compare.extra.length);
emit({ seed, opts, runs, ok });

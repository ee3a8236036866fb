// One uncut client.runs.stream while the test kills the run's worker (Redis): the stream goes
// on with a second metadata {attempt: 2, rewind_to} and the new attempt's events; folded
// (lib.mjs fold: drop what came after rewind_to, then append) it must be an uncrashed run.
// Prints one {"progress": n, "run_id", "thread_id", "event", "data"} line per event (the test
// decides when to kill), then {"result": {...}} with the raw and folded stream and the
// replay read from --replay-url (another API process) once the run is over.
//
//   node tests/js/worker_kill.mjs URL [--replay-url URL2] [--chunks 10] [--delay-s 0.1]

import { MODES, client as makeClient, emit, fold, parseArgs, readSome } from "./lib.mjs";

const { url, opts } = parseArgs(process.argv.slice(2), {
  replayUrl: "", chunks: 10, delayS: 0.1, assistant: "chaos", apiKey: "", timeoutMs: 90000,
});
const client = makeClient(url, opts.apiKey);
const replayer = makeClient(opts.replayUrl || url, opts.apiKey);
const thread = await client.threads.create();
const tid = thread.thread_id;
let runId = null;
let n = 0;
const seg = await readSome((signal) => {
  const it = client.runs.stream(tid, opts.assistant, {
    input: { chunks: opts.chunks, delay_s: opts.delayS }, streamMode: MODES, streamSubgraphs: true,
    onDisconnect: "continue", signal, onRunCreated: (m) => { runId = m.run_id; },
  });
  return (async function* progress() {
    for await (const part of it) {
      n += 1;
      emit({ progress: n, run_id: runId, thread_id: tid, id: part.id ?? null, event: part.event, data: part.data ?? null });
      yield part;
    }
  })();
}, { timeoutMs: opts.timeoutMs });
const errors = [];
if (seg.error) errors.push(`stream: ${seg.error}`);
if (seg.hung) errors.push("stream hung");
let status = null;
let replay = [];
if (runId) {
  await replayer.runs.join(tid, runId).catch((e) => errors.push(`join: ${e}`));
  status = (await replayer.runs.get(tid, runId)).status;
  const rep = await readSome(
    (signal) => replayer.runs.joinStream(tid, runId, { lastEventId: "-1", streamMode: MODES, signal }),
    { timeoutMs: 30000 },
  );
  if (rep.error || rep.hung) errors.push(`replay: ${rep.error || "hung"}`);
  replay = rep.parts;
}
const folded = fold([seg.parts]);
emit({
  result: {
    thread_id: tid, run_id: runId, status, ended: seg.ended, raw: seg.parts, folded: folded.events,
    metadata: folded.metadata, replay, replay_folded: fold([replay]).events, errors,
  },
});

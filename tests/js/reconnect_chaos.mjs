// The JS SDK's own reconnect, exact: client.runs.stream through an HTTP proxy that cuts
// the stream's connection (the network, not the client, drops it), and the SDK reconnects
// by itself: GET <Location> with Last-Event-ID (after a clean EOF it first asks
// GET /threads/{t}/runs/{r} whether the run is still active). Per run, the first
// connection ends cleanly at an event boundary after a few events (a proxy's idle cut,
// langgraph#9016's case), the next --cuts ones are reset (RST) after a random number of
// bytes; the SDK's one stream, folded, must equal the run's full replay read directly.
//
//   node tests/js/reconnect_chaos.mjs URL [--runs 3] [--cuts 3] [--seed N] [--chunks 12]
//        [--delay-s 0.12] [--resumable] [--assistant chaos] [--api-key K]
//
// Prints {seed, opts, runs: [{run_id, got, replay, compare, connections, errors}], ok}.

import http from "node:http";

import { MODES, client as makeClient, compare, emit, fold, parseArgs, prng, readSome } from "./lib.mjs";

const { url, opts } = parseArgs(process.argv.slice(2), {
  runs: 3, cuts: 3, seed: 0, chunks: 12, delayS: 0.12, resumable: false, assistant: "chaos", apiKey: "", timeoutMs: 60000,
});
const seed = opts.seed || Math.floor(Math.random() * 2 ** 31);
const rnd = prng(seed);
const upstream = new URL(url);

// per thread: the stream connections the proxy saw, and how many it has cut
const seen = new Map();
const threadOf = (path) => /\/threads\/([^/?]+)\/runs/.exec(path)?.[1];

const proxy = http.createServer((req, res) => {
  const up = http.request({
    host: upstream.hostname, port: upstream.port, method: req.method, path: req.url,
    headers: { ...req.headers, host: upstream.host },
  }, (upRes) => {
    res.writeHead(upRes.statusCode, upRes.headers);
    const tid = threadOf(req.url);
    const isStream = /\/runs(\/[^/?]+)?\/stream(\?|$)/.test(req.url) && tid;
    if (!isStream) { upRes.pipe(res); return; }
    const log = seen.get(tid) ?? { connections: [] };
    seen.set(tid, log);
    const n = log.connections.length;
    const conn = { method: req.method, path: req.url, last_event_id: req.headers["last-event-id"] ?? null, status: upRes.statusCode, cut: null, bytes: 0 };
    log.connections.push(conn);
    // connection 0: clean end after k events; 1..cuts: reset after b bytes; then untouched
    const mode = n === 0 ? "eof" : n <= opts.cuts ? "rst" : null;
    const frames = rnd.int(2, 5);
    const budget = rnd.int(40, 800);
    let pending = "";
    let done = false;
    upRes.on("data", (chunk) => {
      if (done) return;
      if (mode === "eof") {
        pending += chunk.toString("utf8");
        let out = "";
        let m;
        while (!done && (m = /\r\n\r\n|\n\n|\r\r/.exec(pending))) {
          const frame = pending.slice(0, m.index + m[0].length);
          pending = pending.slice(m.index + m[0].length);
          out += frame;
          if (!frame.startsWith(":") && ++conn.frames >= frames) done = true;
        }
        if (out) res.write(out);
        if (done) {
          conn.cut = `eof after ${conn.frames} frames`;
          up.destroy();
          res.end();
        }
        return;
      }
      if (mode === "rst" && conn.bytes + chunk.length >= budget) {
        res.write(chunk.subarray(0, budget - conn.bytes));
        conn.bytes = budget;
        conn.cut = `rst after ${budget} bytes`;
        done = true;
        up.destroy();
        // flush what was written, then reset the client's socket
        setTimeout(() => res.socket?.resetAndDestroy(), 20);
        return;
      }
      conn.bytes += chunk.length;
      res.write(chunk);
    });
    upRes.on("end", () => { if (!done) { if (pending) res.write(pending); res.end(); } });
    upRes.on("error", () => { if (!done) res.destroy(); });
    conn.frames = 0;
  });
  up.on("error", (err) => { if (!res.headersSent) { res.writeHead(502); res.end(String(err)); } else res.destroy(); });
  req.pipe(up);
});
await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
const proxied = makeClient(`http://127.0.0.1:${proxy.address().port}`, opts.apiKey);
const direct = makeClient(url, opts.apiKey);
const input = { chunks: opts.chunks, delay_s: opts.delayS };

async function oneRun() {
  const errors = [];
  const thread = await direct.threads.create();
  const tid = thread.thread_id;
  let created = null;
  const seg = await readSome(
    (signal) => proxied.runs.stream(tid, opts.assistant, {
      input, streamMode: MODES, streamSubgraphs: true, streamResumable: opts.resumable, onDisconnect: "continue", signal,
      onRunCreated: (m) => { created = m; },
    }),
    { timeoutMs: opts.timeoutMs },
  );
  if (seg.error) errors.push(`stream: ${seg.error}`);
  if (seg.hung) errors.push("stream hung");
  const runId = created?.run_id ?? seg.parts.find((p) => p.event === "metadata")?.data?.run_id;
  if (!runId) return { thread_id: tid, errors: [...errors, "no run id"], connections: seen.get(tid)?.connections };
  await direct.runs.join(tid, runId);
  const rep = await readSome(
    (signal) => direct.runs.joinStream(tid, runId, { lastEventId: "-1", streamMode: MODES, signal }),
    { timeoutMs: opts.timeoutMs },
  );
  if (rep.error || rep.hung) errors.push(`replay: ${rep.error || "hung"}`);
  const got = fold([seg.parts]);
  const replay = fold([rep.parts]);
  return {
    thread_id: tid, run_id: runId, on_run_created: created, ended: seg.ended,
    connections: seen.get(tid)?.connections ?? [], got: got.events, got_metadata: got.metadata,
    replay: replay.events, compare: compare(got.events, replay.events), errors,
  };
}

const runs = await Promise.all(Array.from({ length: opts.runs }, () => oneRun().catch((e) => ({ errors: [String(e?.stack || e)] }))));
proxy.close();
proxy.closeAllConnections?.();
const ok = runs.every((r) => !r.errors.length && r.ended && r.compare.missing === 0 && r.compare.duplicates === 0
  && r.compare.reordered === 0 && !r.compare.extra.length && !r.compare.differing.length);
emit({ seed, opts, runs, ok });

"""The latest-results table of bench/README.md, from ``bench/results/*.json``.

    .venv/bin/python -m bench.table
"""

from __future__ import annotations

import json
from typing import Any

from .core import RESULTS

# scenario -> (metric key, unit, lower is better) shown per label
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "fanout": [("delivered_eps", "delivered/s"), ("p99_ms", "p99 ms"), ("server_us_per_event", "server µs/event")],
    "runs": [("cpu_ms_per_1k_events", "CPU ms / 1k tokens"), ("token_p99_ms", "token p99 ms"),
             ("ttft_p50_ms", "TTFT p50 ms"), ("ttft_p99_ms", "TTFT p99 ms")],
    "api-latency": [("health_idle_p99_ms", "health p99 idle ms"), ("health_loaded_p99_ms", "health p99 loaded ms"),
                    ("list_idle_p99_ms", "list p99 idle ms"), ("list_loaded_p99_ms", "list p99 loaded ms")],
    "catchup": [("missed_p50", "missed"), ("replay_p50_ms", "replay p50 ms"), ("caught_up_p50_ms", "live after p50 ms"),
                ("caught_up_max_ms", "live after max ms"), ("duplicates_per_client", "dups/client"),
                ("server_first_event_ms", "replay first event ms (server)"),
                ("client_eps", "replay events/s (client)"), ("max_write_kib", "largest write KiB")],
    "redis": [("delivered_eps", "delivered/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
              ("server_us_per_event", "server µs/event")],
    "idle": [("kib_per_connection", "KiB per connection")],
    "cores": [("completed_runs", "completed runs"), ("token_p50_ms", "token p50 ms"), ("token_p99_ms", "token p99 ms"),
              ("ttft_p50_ms", "TTFT p50 ms"), ("ttft_p99_ms", "TTFT p99 ms"),
              ("cpu_ms_per_1k_tokens", "CPU ms / 1k tokens"), ("tokens_per_s", "tokens/s")],
    "watchers": [("complete_clients", "complete watchers"), ("violations", "gaps/dups/disorder"),
                 ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("server_cpu_pct", "server CPU %"),
                 ("server_rss_connected_mib", "RSS connected MiB"), ("server_rss_peak_mib", "RSS peak MiB"),
                 ("server_kib_per_connection", "KiB per connection"), ("server_tasks_peak", "tasks peak")],
    "sdk-chaos": [("exact_runs", "exact runs"), ("missing", "missing"), ("duplicated", "duplicated"),
                  ("reordered", "reordered"), ("hangs", "hangs"), ("missing_pct", "missing %")],
}


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def groups(doc: dict) -> list[tuple[str, dict, dict]]:
    """(phase, measured, ratios) — fanout has phases, the rest one group."""
    if doc["scenario"] == "fanout":
        return [(phase, doc["measured"][phase], doc["ratios"].get(phase, {})) for phase in doc["measured"]]
    return [("", doc["measured"], {k: v for k, v in doc["ratios"].items() if isinstance(v, dict)})]


def render() -> str:
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        doc = json.loads(path.read_text())
        if "machine" not in doc or "scenario" not in doc:
            continue  # not a driver's result (a hand-assembled comparison, say): its own README note
        cols = COLUMNS.get(doc["scenario"], [])
        load = doc["machine"]["loadavg_at_start"][0]
        out.append(f"**{doc['scenario']}** (`{path.name}`, {doc['date']}, load {load} at start, "
                   f"medians of {doc['config'].get('repeat')})\n")
        for phase, measured, ratios in groups(doc):
            out.append("| " + " | ".join([phase or "label", *(c[1] for c in cols)]) + " |")
            out.append("| " + " | ".join(["---"] + ["---:"] * len(cols)) + " |")
            for label, m in measured.items():
                out.append("| " + " | ".join([label, *(fmt(m.get(k)) for k, _ in cols)]) + " |")
            for name, r in ratios.items():
                cells = [fmt(r[k]["ratio"]) if k in r else "" for k, _ in cols]
                out.append("| " + " | ".join([f"*ratio {name}*", *cells]) + " |")
            out.append("")
        bad = [k for k, v in doc.get("checks", {}).items() if v is False or (isinstance(v, dict) and not v.get("ok"))]
        if bad:
            out.append("Checks not met: " + "; ".join(bad) + "\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())

"""Trials, medians, percentiles, ratios and the result document: what every scenario shares.

A scenario measures *labels* (a target, or a target and a transport, e.g. ``ours/sse``)
with ``alternate``: every label once per repeat, the order rotated between repeats so
a noisy neighbour hits all alike. ``summarize`` keeps the per-key medians (and the
per-repeat values of the headline keys); ``ratios`` compares a label to its reference
measured in the same invocation. ``Result`` is the JSON document a run prints and
writes to ``bench/results/<scenario>-<target>.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


class NotApplicable(Exception):
    """This scenario cannot be measured on this target; the message says why."""


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted here), None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def rounded(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def summarize(runs: list[dict], headline: Iterable[str] = ()) -> dict:
    """Per-key medians over repeats (numbers present in every run); the rest from the first run.

    Lists (errors) are concatenated and cut to 5; each ``headline`` key also keeps its
    per-repeat values as ``<key>_runs``."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if all(is_number(v) for v in values):
            med = statistics.median(values)
            out[key] = round(med, 3) if isinstance(med, float) else med
        elif isinstance(first, list):
            out[key] = [e for r in runs for e in r.get(key, [])][:5]
        else:
            out[key] = first
    if len(runs) > 1:
        for key in headline:
            out[f"{key}_runs"] = [r.get(key) for r in runs]
    out["trials"] = len(runs)
    return out


def ratios(runs: dict[str, list[dict]], label: str, reference: str, keys: Iterable[str]) -> dict:
    """``label`` over ``reference`` per key: of the medians, and the median of paired per-repeat ratios."""
    out: dict[str, Any] = {}
    for key in keys:
        a = [r.get(key) for r in runs[label]]
        b = [r.get(key) for r in runs[reference]]
        ma = statistics.median([v for v in a if is_number(v)]) if any(is_number(v) for v in a) else None
        mb = statistics.median([v for v in b if is_number(v)]) if any(is_number(v) for v in b) else None
        paired = [ratio(x, y) for x, y in zip(a, b) if is_number(x) and is_number(y) and y]
        out[key] = {"ratio": ratio(ma, mb), "paired_median": rounded(statistics.median(paired), 3) if paired else None}
    return out


def target_ratios(runs: dict[str, list[dict]], targets: Sequence[str], keys: Iterable[str]) -> dict:
    """The first target over each of the others (the references)."""
    return {f"{targets[0]} / {ref}": ratios(runs, targets[0], ref, keys) for ref in targets[1:]}


def label_ratios(runs: dict[str, list[dict]], primary: str, keys: Iterable[str]) -> dict:
    """For labels ``target/transport``: each other transport of ``primary`` over the primary's
    SSE, and the primary's SSE over each reference target's SSE."""
    base = f"{primary}/sse"
    out = {}
    for label in runs:
        if label == base or base not in runs:
            continue
        a, b = (label, base) if label.startswith(primary + "/") else (base, label)
        out[f"{a} / {b}"] = ratios(runs, a, b, keys)
    return out


def alternate(labels: Sequence[str], repeat: int, trial: Callable[[str, int], dict]) -> dict[str, list[dict]]:
    """``trial(label, repeat_index)`` for every label, ``repeat`` times, rotating who goes first."""
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    for rep in range(repeat):
        k = rep % len(labels)
        for label in [*labels[k:], *labels[:k]]:
            runs[label].append(trial(label, rep))
    return runs


# -- deliveries ------------------------------------------------------------------------

@dataclass
class Delivery:
    """What a load generator's clients received: per-client summaries and token triplets."""

    clients: list[dict]
    triplets: list[array]  # per client: float64 i, t, recv
    cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, prefix: str) -> Delivery:
        doc = json.loads(Path(prefix + ".json").read_text())
        flat = array("d")
        with open(prefix + ".bin", "rb") as f:
            flat.frombytes(f.read())
        per, pos = [], 0
        for c in doc["clients"]:
            n = 3 * c["tokens"]
            per.append(flat[pos:pos + n])
            pos += n
        for suffix in (".json", ".bin"):
            Path(prefix + suffix).unlink(missing_ok=True)
        return cls(doc["clients"], per, doc.get("cpu_s", 0.0))

    @classmethod
    def merge(cls, parts: Sequence[Delivery]) -> Delivery:
        return cls([c for p in parts for c in p.clients], [t for p in parts for t in p.triplets],
                   sum(p.cpu_s for p in parts), [e for p in parts for e in p.errors])

    def pairs(self, emitted_after: float = 0.0) -> Iterable[tuple[float, float]]:
        """(t, recv) of every token emitted at or after ``emitted_after``."""
        for tri in self.triplets:
            ts, recv = tri[1::3], tri[2::3]
            for t, r in zip(ts, recv):
                if t >= emitted_after:
                    yield t, r

    def incomplete(self, count: int) -> list[dict]:
        return [c for c in self.clients if c["tokens"] != count or not c["ended"] or c["error"]]

    def violations(self) -> int:
        return sum(c["violations"] for c in self.clients)

    def stream_metrics(self, *, count: int, rate: float, live_after: float, cpu_s: float) -> dict:
        """Delivered/s, emit-to-receive latency and checks of one fan-out-like trial."""
        live = list(self.pairs(live_after))
        lat = [(r - t) * 1000.0 for t, r in live]
        window = (max(r for _, r in live) - min(t for t, _ in live)) if live else 0.0
        tokens = sum(c["tokens"] for c in self.clients)
        bad = self.incomplete(count)
        return {
            "clients": len(self.clients),
            "demanded_eps": rate * len(self.clients),
            "delivered_eps": round(len(live) / window, 1) if window > 0 else None,
            "p50_ms": rounded(percentile(lat, 0.50)),
            "p99_ms": rounded(percentile(lat, 0.99)),
            "max_ms": rounded(max(lat)) if lat else None,
            "window_s": round(window, 3),
            "tokens": tokens,
            "violations": self.violations(),
            "incomplete_clients": len(bad),
            "server_cpu_pct": round(100 * cpu_s / window, 1) if window > 0 else None,
            "server_us_per_event": round(1e6 * cpu_s / tokens, 2) if tokens and cpu_s else None,
            "loadgen_cpu_pct": round(100 * self.cpu_s / window, 1) if window > 0 else None,
            "errors": (self.errors + [str(c["error"]) for c in bad if c["error"]])[:5],
        }


# -- the result document ---------------------------------------------------------------

def machine() -> dict:
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in load],
            # other work competing for the cores: trust ratios more than absolute numbers
            "busy_at_start": load[0] > (os.cpu_count() or 1) * 0.5}


@dataclass
class Result:
    scenario: str
    target: str
    config: dict
    measured: dict[str, dict] = field(default_factory=dict)  # label -> summary
    ratios: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    machine: dict = field(default_factory=machine)
    started: float = field(default_factory=time.time)

    def record(self, runs: dict[str, list[dict]], headline: Iterable[str], ratios: dict, *,
               phase: str | None = None, incomplete: str = "incomplete_clients") -> dict[str, dict]:
        """Keep the medians and ratios of ``runs`` (under ``phase``, if given); check every
        label got everything once and in order."""
        measured = {label: summarize(r, headline) for label, r in runs.items()}
        for label, m in measured.items():
            if "violations" in m:
                self.checks[f"{phase + ' ' if phase else ''}{label} complete and in order"] = (
                    m["violations"] == 0 and m[incomplete] == 0)
        if phase:
            self.measured[phase], self.ratios[phase] = measured, ratios
        else:
            self.measured, self.ratios = measured, ratios
        return measured

    def doc(self) -> dict:
        m = {**self.machine, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
        return {"scenario": self.scenario, "target": self.target, "date": time.strftime(
                    "%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
                "wall_s": round(time.time() - self.started, 1), "machine": m, "config": self.config,
                "measured": self.measured, "ratios": self.ratios, "checks": self.checks, "notes": self.notes}

    def write(self, path: Path | None = None) -> Path:
        path = path or RESULTS / f"{self.scenario}-{self.target}.json"
        text = json.dumps(self.doc(), indent=2)
        print(text)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        say(f"wrote {path}")
        return path

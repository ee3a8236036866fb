"""The benchmark driver: ``python -m bench SCENARIO --target ours|raw|langgraph-dev [--compare ...]``.

Prints one JSON document (progress on stderr) and writes it to
``bench/results/<scenario>-<target>.json``. ``--compare`` names references measured in
the same invocation, trial for trial, so the result's ratios come from one moment of a
shared, noisy machine. A scenario that cannot apply to a target says why and exits 2.
See bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .core import NotApplicable, say
from .procs import TARGETS
from .scenarios import SCENARIOS, Context

# Every scenario's knobs; a scenario's DEFAULTS fills what the command line leaves out.
FLAGS: dict[str, tuple[type, str]] = {
    "clients": (int, "subscribers (fanout, redis, catchup)"),
    "events": (int, "events per run (fanout paced, redis, api-latency/runs: tokens per run)"),
    "rate": (float, "events/s per run"),
    "sat_events": (int, "fanout saturation: events (0 skips the phase)"),
    "sat_rate": (float, "fanout saturation: events/s"),
    "runs": (int, "concurrent runs (runs, api-latency); soak: runs in all"),
    "wave": (int, "soak: runs per wave (RSS and tasks are sampled after each)"),
    "spread_s": (float, "runs: seconds over which the runs start (soak: per wave)"),
    "connections": (int, "idle: connections held"),
    "missed": (int, "catchup: events a reconnecting client missed"),
    "live": (int, "catchup: events after the reconnect"),
    "probe_interval_ms": (float, "api-latency: time between probes"),
    "repeat": (int, "trials per label; results are medians"),
    "loadgen_procs": (int, "load-generator processes sharing the clients"),
    "transports": (str, "comma-separated subset of sse,socketio,socketio_batch"),
    "cuts": (int, "sdk-chaos: cuts per run (the stream, then joins, each closed after 1-8 events)"),
    "chunks": (int, "sdk-chaos: custom chunks per node of the chaos graph"),
    "join_timeout_s": (float, "sdk-chaos: a join not ended after this long is a hang"),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--target", choices=TARGETS, default="ours")
    p.add_argument("--compare", default="", help="comma-separated reference targets, measured alongside")
    p.add_argument("--install-langgraph", action="store_true",
                   help="create bench/.venv-langgraph with langgraph-cli[inmem] if it is missing")
    p.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set in the environment of the servers the bench starts (repeatable), "
                        "e.g. THOUGHTSTREAM_JOURNAL=false; recorded in the result's config")
    for flag, (kind, text) in FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, help=text)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    module = SCENARIOS[args.scenario]
    targets = [args.target, *[t for t in args.compare.split(",") if t and t != args.target]]
    for t in targets:
        if t not in TARGETS:
            print(f"bench: unknown target {t!r} (choose from {', '.join(TARGETS)})", file=sys.stderr)
            return 2
        why = module.APPLIES.get(t, "not implemented for this target")
        if why:
            print(f"bench: scenario {args.scenario!r} does not apply to target {t!r}: {why}", file=sys.stderr)
            return 2
    opts = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in module.DEFAULTS.items()}
    env = dict(kv.split("=", 1) for kv in args.env)
    # Targets' processes inherit the driver's environment (ServerProcess, Subprocess): one
    # knob for every scenario, e.g. ours with the journal off, without a scenario of its own.
    os.environ.update(env)
    ctx = Context(args.scenario, targets, opts, install_langgraph=args.install_langgraph)
    say(f"{args.scenario}: targets {targets}, {opts}")
    try:
        with ctx.stack:
            result = module.run(ctx)
    except NotApplicable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    result.config["targets"] = targets
    if env:
        result.config["env"] = env
    result.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

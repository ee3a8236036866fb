"""Where the Redis keys live: one hash tag per run, one for the control plane.

A Redis Cluster runs a script or a MULTI only on keys of one slot, and a key's slot is
that of its hash tag (the part in braces) when it has one. So:

- the data plane is tagged by run: a run's record, its log's Stream, its meta hash and
  its live channel are ``{prefix}:run:{<run id>}…`` - each append stays one script on
  one shard, and runs spread over the shards;
- the control plane is one tag, ``{prefix}:{ctl}…``: the queue Stream, the fair
  scheduler's keys (its scripts touch the queue too), the workers' announcements, the
  run and thread indexes, idempotency keys, tickets and revocations.

A standalone Redis ignores the braces; the names are the same on both.
"""

from __future__ import annotations


def control(prefix: str) -> str:
    """The base of every control-plane key (one slot on a cluster)."""
    return f"{prefix}:{{ctl}}"


def run(prefix: str, run_id: str) -> str:
    """The run's record hash, and the base of its other keys (one slot per run)."""
    return f"{prefix}:run:{{{run_id}}}"


def run_log(prefix: str, run_id: str) -> str:
    return run(prefix, run_id) + ":log"


def run_meta(prefix: str, run_id: str) -> str:
    """The hash holding a log's next seq and state; its existence is the log's existence."""
    return run(prefix, run_id) + ":meta"


def run_channel(prefix: str, run_id: str) -> str:
    """The run's live channel (a shard channel on a cluster: same slot as its log)."""
    return run(prefix, run_id) + ":live"


def queue(prefix: str) -> str:
    return control(prefix) + ":queue"


def workers(prefix: str) -> str:
    return control(prefix) + ":workers"


def scheduler(prefix: str) -> str:
    return control(prefix) + ":sched"


def epoch(prefix: str) -> str:
    return control(prefix) + ":epoch"

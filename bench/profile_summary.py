"""Summarise py-spy ``--format raw`` (collapsed stacks): top functions by self and total time.

    python -m bench.profile_summary PROFILE.txt [--top 25] [--filter server/]

A line is ``frame;frame;...;leaf COUNT``, a frame ``function (path:line)``. Line numbers
are dropped so a function's samples add up; ``total`` counts a function once per stack.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME_RE = re.compile(r"^(?P<fn>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
SITE_RE = re.compile(r".*/(site-packages|lib/python3\.\d+)/")


def short(frame: str) -> str:
    m = FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    path = SITE_RE.sub("", m.group("path")).replace("/work/main/", "")
    return f"{m.group('fn')} ({path})"


def summarise(text: str) -> tuple[int, Counter[str], Counter[str]]:
    total, own, incl = 0, Counter(), Counter()
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return total, own, incl


def report(path: Path, top: int = 25, contains: str | None = None) -> str:
    total, own, incl = summarise(path.read_text())
    if not total:
        return f"{path}: no samples"
    lines = [f"{path.name}: {total} samples"]
    for title, counter in (("self", own), ("total (inclusive)", incl)):
        lines.append(f"-- top {top} by {title} --")
        shown = 0
        for fn, n in counter.most_common():
            if contains and contains not in fn:
                continue
            lines.append(f"{100 * n / total:6.1f}%  {fn}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--filter", help="only functions whose name or path contains this")
    args = p.parse_args()
    for path in args.profiles:
        print(report(path, args.top, args.filter))
        print()


if __name__ == "__main__":
    main()

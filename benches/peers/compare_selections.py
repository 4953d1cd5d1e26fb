#!/usr/bin/env python3
"""Compare two `fmp-engine scan` reports of the same model: maps selected in common, and scores that
differ (with the largest difference). One line on stdout."""
import json
import sys


def load(path):
    with open(path) as f:
        return json.load(f)["convs"]


def main():
    a, b = load(sys.argv[1]), load(sys.argv[2])
    if [c["name"] for c in a] != [c["name"] for c in b]:
        sys.exit("the reports scan different convs")
    common = sum(len(set(x["selected"]) & set(y["selected"])) for x, y in zip(a, b))
    total = sum(len(x["selected"]) for x in a)
    diffs = [(abs(s - t), x["name"], i)
             for x, y in zip(a, b) for i, (s, t) in enumerate(zip(x["scores"], y["scores"])) if s != t]
    maps = sum(len(x["scores"]) for x in a)
    moved = [f'{x["name"]}: {sorted(set(x["selected"]) - set(y["selected"]))} -> '
             f'{sorted(set(y["selected"]) - set(x["selected"]))}'
             for x, y in zip(a, b) if set(x["selected"]) != set(y["selected"])]
    big = max(diffs)[0] if diffs else 0.0
    print(f"{common} of {total} selected in common; {len(diffs)} of {maps} scores differ (max {big:.3g})"
          + (f"; {'; '.join(moved)}" if moved else ""))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Compare two `fmp-engine scan` reports of the same model: maps selected in common, the maps that
moved, and how many per-map values differ (accuracy score, mean true-class probability, mean logit
margin, each with its largest difference). One line on stdout."""
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
    maps = sum(len(x["scores"]) for x in a)

    def differ(key):
        d = [abs(s - t) for x, y in zip(a, b) for s, t in zip(x.get(key) or [], y.get(key) or []) if s != t]
        return f"{key} {len(d)} (max {max(d):.3g})" if d else f"{key} 0"
    moved = [f'{x["name"]}: {sorted(set(x["selected"]) - set(y["selected"]))} -> '
             f'{sorted(set(y["selected"]) - set(x["selected"]))}'
             for x, y in zip(a, b) if set(x["selected"]) != set(y["selected"])]
    print(f"{common} of {total} selected in common; of {maps} maps, these differ: "
          f"{', '.join(differ(k) for k in ('scores', 'true_prob', 'margin'))}"
          + (f"; {'; '.join(moved)}" if moved else ""))


if __name__ == "__main__":
    main()

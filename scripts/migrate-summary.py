#!/usr/bin/env python3
"""Sum up `uiommufd migrate --json-out` reports: per tracker, every run's
downtime against its bound, final-round bitmap share and throughput
against the raw socket copy, and their medians. Prints only; the caller
decides the step by the migrations' own verdicts."""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
for path in sys.argv[1:]:
    with open(path) as f:
        r = json.load(f)
    runs[r["tracker"]].append(r)

sizes = sorted({r["mem_bytes"] >> 20 for v in runs.values() for r in v})
print("\nmain job summary (%s MiB, %d runs per tracker)" % (
    "/".join(map(str, sizes)), max(len(v) for v in runs.values())))
print("%-12s %-31s %-29s %-30s %s" % ("tracker", "downtime/bound (within)", "bitmap share % (<=5)",
                                      "throughput/raw (>=0.8)", "verified"))
for t in ("hwpt", "type1", "dma-logging"):
    rs = runs.get(t, [])
    if not rs:
        continue
    down = [r["downtime_s"] / r["downtime_bound_s"] for r in rs]
    share = [100 * r["bitmap_share"] for r in rs]
    thr = [r["throughput_bps"] / r["raw_socket_bps"] for r in rs]
    ok = sum(bool(r["ok"]) for r in rs)

    def col(xs, fmt, good):
        return "%s med %s (%d/%d)" % (
            " ".join(fmt % x for x in xs), fmt % statistics.median(xs),
            sum(good(x) for x in xs), len(xs))

    print("%-12s %-31s %-29s %-30s %d/%d" % (
        t,
        col(down, "%.2f", lambda x: x <= 1.0),
        col(share, "%.1f", lambda x: x <= 5.0),
        col(thr, "%.2f", lambda x: x >= 0.8),
        ok, len(rs)))

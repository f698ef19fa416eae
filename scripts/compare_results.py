"""Compare two trees of `bestroute eval` results (one results.json per seed directory) field by field,
except measured latencies: python scripts/compare_results.py BEFORE AFTER. Prints each difference,
then a JSON summary."""

import json
import sys
from pathlib import Path

SKIP = {"decision_latency_ms_p50", "fit_seconds", "seconds", "wall_s"}


def walk(a, b, path, diffs):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in SKIP or "latency" in k or k.endswith("_s"):
                continue
            if k not in a or k not in b:
                diffs.append(f"{path}.{k}: only in {'after' if k in b else 'before'}")
                continue
            walk(a[k], b[k], f"{path}.{k}", diffs)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", diffs)
    elif a != b:
        diffs.append(f"{path}: {a!r} != {b!r}")


before, after = Path(sys.argv[1]), Path(sys.argv[2])
total = 0
fields = 0
for seed in sorted(p.name for p in before.iterdir()):
    a = json.loads((before / seed / "results.json").read_text())
    b = json.loads((after / seed / "results.json").read_text())
    diffs = []
    walk(a, b, seed, diffs)
    total += len(diffs)
    for d in diffs[:10]:
        print(d)
print(json.dumps({"seeds": len(list(before.iterdir())), "differences": total}))

# ruff: noqa: E501  (markdown table rows are built in one line each)
"""Print the mutation-testing table of docs/benchmarks.md from ``bench/results/mutation.json`` (no re-run).

``python bench/mutation_md.py [bench/results/mutation.json]``
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from mutation_scope import SHARDS  # noqa: E402


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "mutation.json"
    d = json.loads(path.read_text())
    out = [
        "| shard | scope | mutants | killed | survived (triaged) | workers | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in SHARDS:
        s = d["shards"].get(name)
        if s is None:
            out.append(f"| `{name}` | not run yet | | | | | |")
            continue
        t = s["totals"]
        mods = ", ".join(f"`{m.removeprefix('lipkit.')}`" for m in SHARDS[name])
        triaged = sum(1 for f in s["functions"].values() for m in f["survivors"] if m["reason"])
        out.append(f"| `{name}` | {mods} ({len(s['functions'])} functions) | {t['total']} | {t['killed']} | "
                   f"{t['total'] - t['killed']} ({triaged}) | {s.get('workers', 1)} | {s.get('seconds', '-')} |")
    t = d["totals"]
    triaged = sum(1 for s in d["shards"].values() for f in s["functions"].values() for m in f["survivors"]
                  if m["reason"])
    out.append(f"| all | | {t['total']} | {t['killed']} | {t['total'] - t['killed']} ({triaged}) | | "
               f"{d['seconds']} |")
    kinds = Counter(m["kind"] for s in d["shards"].values() for f in s["functions"].values()
                    for m in f["survivors"])
    out += ["", "Survivors by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=str))
            + f".  Tool: {d['tool']}; machine: {d['machine']['platform']}, {d['machine']['cpus']} CPUs "
            "(shared with other jobs while it ran)."]
    print("\n".join(out))


if __name__ == "__main__":
    main()

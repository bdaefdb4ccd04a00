"""Mutation testing of the soundness-critical code (issue 17): ``make mutate [SHARD=name]``.

Runs mutmut (``--jobs`` workers, default 2: the machine's cores) on the functions listed in
bench/mutation_scope.py and writes
bench/results/mutation.json: per shard and per function the mutants total / killed / survived / timeout,
every survivor with its diff and the reason it survives (from ``SURVIVORS``; ``null``: not triaged), the
command, date, seconds per shard and the machine.  Without ``--shard`` every shard runs (fresh: the
``mutants/`` directory is removed first); with ``--shard`` only that one, merged into the existing JSON.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from mutation_scope import NOT_MUTATED, PENDING, SHARD_TESTS, SHARDS, SURVIVORS, mangled  # noqa: E402

OUT = ROOT / "bench" / "results" / "mutation.json"
MUTANTS = ROOT / "mutants"


def _status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def _module_file(module: str) -> Path:
    """mutmut's mutated copy of ``module`` (a package's ``__init__.py`` for a package)."""
    path = MUTANTS / "src" / (module.replace(".", "/") + ".py")
    return path if path.exists() else MUTANTS / "src" / module.replace(".", "/") / "__init__.py"


def _diffs(module: str) -> dict[str, str]:
    """mutant name (without module) -> the changed lines, from mutmut's mutated copy of the file."""
    path = _module_file(module)
    source = path.read_text()
    lines = source.splitlines()
    funcs = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            funcs[node.name] = text.replace(node.name, "f", 1)
    out = {}
    for name, body in funcs.items():
        if name.endswith("__mutmut_orig"):
            continue
        orig = funcs.get(name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
        if orig is None:
            continue
        diff = difflib.unified_diff(orig.splitlines(), body.splitlines(), lineterm="", n=0)
        lines = [ln[0] + " " + ln[1:].strip() for ln in diff
                 if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        out[name] = " | ".join(lines)
    return out


def _results(shard: str) -> dict:
    """Per function of the shard: counts and survivors, read from mutmut's .meta files."""
    report: dict = {}
    for module, functions in SHARDS[shard].items():
        meta = json.loads(_module_file(module).with_name(_module_file(module).name + ".meta").read_text())
        codes = meta["exit_code_by_key"]
        diffs = _diffs(module)
        for function in functions:
            prefix = mangled(module, function)
            keys = sorted((k for k in codes if k.startswith(prefix)), key=lambda k: int(k.rsplit("_", 1)[1]))
            statuses = {k: _status(codes[k]) for k in keys}
            counts = Counter(statuses.values())
            survivors = []
            for k in keys:
                if statuses[k] in ("survived", "no tests", "suspicious"):
                    kind, why = SURVIVORS.get(k, (None, None))
                    survivors.append({"mutant": k, "status": statuses[k], "diff": diffs.get(k.split(".")[-1]),
                                      "kind": kind, "reason": why})
            report[f"{module}.{function}"] = {
                "total": len(keys), "killed": counts["killed"], "survived": counts["survived"],
                "timeout": counts["timeout"], "no_tests": counts["no tests"],
                "not_checked": counts["not checked"], "other": sum(counts.values()) - counts["killed"]
                - counts["survived"] - counts["timeout"] - counts["no tests"] - counts["not checked"],
                "survivors": survivors,
            }
    return report


def _run_shard(shard: str, jobs: int) -> tuple[list[str], float]:
    patterns = [mangled(m, f) + "*" for m, fs in SHARDS[shard].items() for f in fs]
    for module in SHARDS[shard]:
        # mutmut regenerates a file's mutants only when the source is newer than its copy; a copy written
        # without mutants (the file was outside only_mutate then) would make the run find none
        copy = _module_file(module)
        if not copy.exists() or "__mutmut_" not in copy.read_text():
            source = ROOT / "src" / copy.relative_to(MUTANTS / "src")
            source.touch()
    # mutmut's CLI, in this interpreter, with the shard's test selection (mutmut forks its workers, so the
    # loaded config is theirs too); a changed selection makes mutmut re-collect its stats and reset its
    # cached results, which is why each shard's results are read right after it runs
    launcher = ("import sys, mutmut.configuration as c; from mutmut.__main__ import cli; "
                f"c.config().pytest_add_cli_args_test_selection = {_test_selection(shard)!r}; "
                "sys.argv = ['mutmut', *sys.argv[1:]]; sys.exit(cli())")
    cmd = [sys.executable, "-c", launcher, "run", "--max-children", str(jobs), *patterns]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    start = time.monotonic()
    log = ROOT / "mutants" / f"mutmut-{shard}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"mutmut failed for shard {shard} (exit {proc.returncode}); see {log}")
    return cmd, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", choices=sorted(SHARDS), action="append",
                        help="run only this shard (repeatable); default: all, from scratch")
    parser.add_argument("--jobs", type=int, default=2,
                        help="mutmut workers (each runs pytest with one torch thread); default 2")
    parser.add_argument("--report-only", action="store_true", help="re-read mutmut's results, run nothing")
    parser.add_argument("--retriage", action="store_true",
                        help="re-apply SURVIVORS (kinds and reasons) to the recorded survivors, run nothing")
    args = parser.parse_args()
    if args.retriage:
        _retriage()
        return
    shards = args.shard or list(SHARDS)
    keep = OUT.exists() and (args.shard or args.report_only)
    data = json.loads(OUT.read_text()) if keep else {}
    if not args.shard and not args.report_only and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    stats = MUTANTS / "mutmut-stats.json"
    if not args.report_only and stats.exists():
        stats.unlink()  # mutmut's test-to-function map: re-collected, so new or renamed functions get tests
    data.setdefault("shards", {})
    for shard in shards:
        entry = data["shards"].get(shard, {})
        if not args.report_only:
            cmd, seconds = _run_shard(shard, args.jobs)
            entry.update(command=" ".join(["OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "mutmut",
                                           *cmd[3:]]),
                         tests=_test_selection(shard), workers=args.jobs,
                         seconds=round(seconds, 1),
                         date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        entry["functions"] = _results(shard)
        entry["totals"] = {k: sum(f[k] for f in entry["functions"].values())
                           for k in ("total", "killed", "survived", "timeout", "no_tests", "not_checked")}
        data["shards"][shard] = entry
        print(f"{shard}: {entry['totals']} in {entry.get('seconds')} s", flush=True)
        if not args.report_only:
            data.update(
                command="make mutate" + (" SHARD=" + repr(" ".join(args.shard)) if args.shard else ""),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        _write(data)  # after every shard: a later shard's failure keeps the results of the earlier ones
    print(f"wrote {OUT.relative_to(ROOT)}")


def _write(data: dict) -> None:
    """The summary fields over all recorded shards, and the JSON file."""
    from importlib.metadata import version

    data["totals"] = {k: sum(s["totals"][k] for s in data["shards"].values())
                      for k in ("total", "killed", "survived", "timeout", "no_tests", "not_checked")}
    data["survivors_by_kind"] = dict(Counter(str(m["kind"]) for s in data["shards"].values()
                                             for f in s["functions"].values() for m in f["survivors"]))
    data["stale_triage"] = stale_triage(data)
    data.update(
        seconds=round(sum(s.get("seconds", 0.0) for s in data["shards"].values()), 1),
        tool=f"mutmut {version('mutmut')}; per shard `workers` (--max-children; 1 where absent)",
        machine={"platform": platform.platform(), "python": platform.python_version(),
                 "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        tests=_test_selection(None),
        not_mutated={"reason": "mutmut skips decorated functions (registered rules)",
                     "functions": NOT_MUTATED},
        pending_scope=PENDING,
        how_to_extend="list the functions in bench/mutation_scope.py SHARDS (and the file in [tool.mutmut] "
        "only_mutate, its tests in pytest_add_cli_args_test_selection or, per shard, in SHARD_TESTS)",
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _retriage() -> None:
    """Re-apply :data:`SURVIVORS` to the survivors recorded in the JSON (after a triage edit; mutmut's own
    results of earlier shards are reset by later runs, so ``--report-only`` cannot re-read them)."""
    data = json.loads(OUT.read_text())
    for s in data["shards"].values():
        for f in s["functions"].values():
            for m in f["survivors"]:
                m["kind"], m["reason"] = SURVIVORS.get(m["mutant"], (None, None))
    data["survivors_by_kind"] = dict(Counter(str(m["kind"]) for s in data["shards"].values()
                                             for f in s["functions"].values() for m in f["survivors"]))
    data["stale_triage"] = stale_triage(data)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"re-triaged {OUT.relative_to(ROOT)}: {data['survivors_by_kind']}; "
          f"{len(data['stale_triage'])} stale triage entries")


def stale_triage(data: dict) -> list[str]:
    """Mutants listed in :data:`SURVIVORS` that the recorded runs do not report as survivors (killed since,
    or renumbered by an edit of their function): entries to delete, before a renumbered mutant inherits a
    reason written for another."""
    recorded = {m["mutant"] for s in data["shards"].values() for f in s["functions"].values()
                for m in f["survivors"]}
    return sorted(set(SURVIVORS) - recorded)


def _test_selection(shard: str | None) -> list[str]:
    """The tests mutmut runs for ``shard`` (:data:`SHARD_TESTS`, else pyproject.toml's selection)."""
    import tomllib

    if shard in SHARD_TESTS:
        return SHARD_TESTS[shard]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"][
        "pytest_add_cli_args_test_selection"]


if __name__ == "__main__":
    main()

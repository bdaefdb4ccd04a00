"""The recorded mutation report (``make mutate`` -> bench/results/mutation.json) against its scope.

Issue 17's target: every surviving mutant of the scoped functions is killed or listed with the reason it
survives, and none that weakens a proof's margin is left unexplained.  These checks read the recorded report
and ``bench/mutation_scope.py``: they fail when a scoped function has no recorded results, when a survivor
has no reason (or the open kind ``margin-unreached``), when a reason is listed for a mutant the report does
not hold (killed since, or renumbered: it would pass its reason to another mutant), or when the summed
shard time exceeds the 60 minutes ``make mutate`` is allowed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from mutation_scope import PENDING, RETIRED, SHARDS, SURVIVORS  # noqa: E402

REPORT = json.loads((ROOT / "bench" / "results" / "mutation.json").read_text())
#: scoped functions mutmut finds nothing to mutate in: ``return _SQRT2`` (its value is checked by
#: tests/test_dp_mutants.py::test_hinge_constant_is_sqrt2)
NOTHING_TO_MUTATE = {"lipkit.losses.MulticlassHingeLoss.logit_lipschitz"}
KINDS = {"equivalent", "conservative", "sound-tuning", "sound-margin", "report-only", "killed-after-run"}


def _survivors():
    for shard in REPORT["shards"].values():
        for function in shard["functions"].values():
            yield from function["survivors"]


@pytest.mark.parametrize("shard", sorted(SHARDS))
def test_every_scoped_function_has_recorded_results(shard):
    recorded = REPORT["shards"][shard]["functions"]
    for module, functions in SHARDS[shard].items():
        for function in functions:
            entry = recorded[f"{module}.{function}"]
            assert (entry["total"] == 0) == (f"{module}.{function}" in NOTHING_TO_MUTATE), function
            assert entry["not_checked"] == 0 and entry["no_tests"] == 0, f"{module}.{function}"


def test_every_survivor_has_an_accepted_reason():
    unexplained = [m["mutant"] for m in _survivors() if m["kind"] not in KINDS or not m["reason"]]
    assert unexplained == []
    assert PENDING == {}


def test_no_reason_is_listed_for_a_mutant_the_report_does_not_hold():
    recorded = {m["mutant"] for m in _survivors()}
    assert sorted(set(SURVIVORS) - recorded) == []
    assert sorted(RETIRED & recorded) == []  # a mutant killed since survives again
    assert all(SURVIVORS[m["mutant"]] == (m["kind"], m["reason"]) for m in _survivors())


def test_the_report_totals_add_up_and_fit_the_time_budget():
    totals = REPORT["totals"]
    assert totals["total"] == sum(s["totals"]["total"] for s in REPORT["shards"].values())
    counted = ("killed", "survived", "timeout", "no_tests", "not_checked")
    other = sum(f["other"] for s in REPORT["shards"].values() for f in s["functions"].values())
    assert sum(totals[k] for k in counted) + other == totals["total"]
    assert totals["no_tests"] == totals["not_checked"] == 0
    assert REPORT["seconds"] == pytest.approx(sum(s["seconds"] for s in REPORT["shards"].values()), abs=0.2)
    assert REPORT["seconds"] <= 3600


def test_shard_selections_that_extend_the_default_start_from_pyprojects():
    import mutation_scope
    import tomllib

    default = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"][
        "pytest_add_cli_args_test_selection"]
    assert mutation_scope._DEFAULT_TESTS == default
    for shard, selection in mutation_scope.SHARD_TESTS.items():
        for test in selection:
            assert (ROOT / test.split("::")[0]).exists(), (shard, test)

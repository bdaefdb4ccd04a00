"""The figures of ``docs/examples/boolean_linf.md``: runs that example's ``run()`` and keeps them.

``python bench/boolean_linf.py`` (under a minute on one core; the example sets 1 torch thread) writes
``bench/results/boolean_linf.json``: per element-wise net (width, depth, activation) the certified radii
of the four corners and ``Q / L``; per activation the smallest and largest radius and ``Q / L`` over
its nets; the same for the hand-made optimum ``|x_1 - x_2| - 1/2`` and the l_inf-distance net, with
the number of corners certified at the target radius 0.45.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch
from _common import write_result

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "boolean_linf.py"


def _radii(entry: dict, radius: float) -> dict:
    r = [float(v) for v in entry["radii"]]
    return {"radii": r, "radius_min": min(r), "radius_max": max(r),
            "certified_at_target": sum(v >= radius for v in r)}


def main() -> None:
    t0 = time.time()
    spec = importlib.util.spec_from_file_location("boolean_linf", EXAMPLE)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    res = ex.run()
    radius = float(res["radius"])
    nets = [{"width": e["width"], "depth": e["depth"], "act": e["act"], "seed": e["seed"],
             "q_over_l": float(e["q_over_l"]), **_radii(e, radius)} for e in res["elementwise"]]
    by_act = {}
    for act in sorted({n["act"] for n in nets}):
        group = [n for n in nets if n["act"] == act]
        by_act[act] = {
            "nets": len(group),
            "radius_min": min(n["radius_min"] for n in group),
            "radius_max": max(n["radius_max"] for n in group),
            "q_over_l_min": min(n["q_over_l"] for n in group),
            "q_over_l_max": max(n["q_over_l"] for n in group),
            "certified_at_target_max": max(n["certified_at_target"] for n in group),
        }
    optimum = res["elementwise_optimum"]
    with torch.no_grad():  # Q / L of the optimum, as the example computes it for the trained nets
        q_opt = float(ex.xor_q(optimum["net"](ex.X).double()) / ex._pair_constant(optimum["net"]).double())
    out = {
        "radius": radius,
        "elementwise": nets,
        "by_activation": by_act,
        "optimum": {**_radii(optimum, radius), "q_over_l": q_opt},
        "sortnet": {**_radii(res["sortnet"], radius), "restarts": res["sortnet_restarts"]},
        "example_seconds": round(res["seconds"], 1),
    }
    path = write_result("boolean_linf", out, time.time() - t0)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

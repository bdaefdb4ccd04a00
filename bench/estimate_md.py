# ruff: noqa: E501  (markdown table rows are built in one line each)
"""Print the "Numbers" section of docs/estimate.md from ``bench/results/estimate.json`` (no re-run).

``python bench/estimate_md.py [bench/results/estimate.json]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def g(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/estimate.json")
    d = json.loads(path.read_text())
    t = d["targets"]
    m = d["machine"]
    out = [
        f"Command: `{d['command']}` ({d['date']}, {m['platform']}, torch {m['torch']}, {m['threads']} thread(s), "
        f"2-core machine; total {d['seconds']} s; seconds below as measured).",
        "",
        "One-hidden-layer ReLU nets without bias (exact constant by brute force over all 2^h patterns), median of "
        "upper / exact (l2):",
        "",
        "| net | naive | lipsdp-layer | **lipsdp** | ECLipsE-Fast | ECLipsE |",
        "|---|---|---|---|---|---|",
    ]
    for net, meds in t["median_upper_over_exact"].items():
        out.append(f"| {net} | {g(meds.get('naive'), 5)} | {g(meds.get('lipsdp-layer'), 5)} | "
                   f"**{g(meds.get('lipsdp'), 5)}** | {g(meds.get('ECLipsE-Fast'), 5)} | {g(meds.get('ECLipsE'), 5)} |")
    out += [
        "",
        "Every other network: best sound lipkit upper bound vs the best eclipse-nn value, same (attained) lower "
        "bound:",
        "",
        "| network | lower | lipkit best (method, seconds) | upper/lower | eclipse best | upper/lower | lipkit <= eclipse |",
        "|---|---|---|---|---|---|---|",
    ]
    secs = {(r["network"], r["method"]): r["seconds"] for r in d["rows"]}
    for n in d["networks"]:
        if n["network"].startswith("1hl-"):
            continue
        s = secs.get((n["network"], n["lipkit_best_method"]))
        ecl = (f"{g(n['eclipse_best_upper'])} ({n['eclipse_best_method']})" if n.get("eclipse_best_upper")
               else "not supported")
        ok = {True: "yes", False: "no"}.get(n.get("no_wider_than_eclipse"), "-")
        out.append(f"| {n['network']} | {g(n['lower'])} | {g(n['lipkit_best_upper'])} ({n['lipkit_best_method']}, "
                   f"{s} s) | {g(n['lipkit_ratio'], 3)} | {ecl} | {g(n.get('eclipse_ratio'), 3)} | {ok} |")
    lp = t["lipopt3_exact_width_le_16"]
    parts = []
    for width, vals in lp["value"].items():
        for v in vals:
            parts.append(f"{width} seed {v['seed']}: {v['over_exact']:.6f}x in {v['seconds']:.1f} s "
                         f"(level-3 LP alone {v['level3_lp_over_exact']:.4f}x, {v['lps_solved']} LP(s))")
    w60 = t["lipopt3_width_60_within_180s"]
    if "error" in w60:
        w60_text = f"{w60['error']}"
    else:
        fam = "clique" if w60.get("clique_family") else "dense"
        w60_text = (f"upper {w60['upper']:.5g} after {w60['seconds']:.0f} s, level-3 LP solved: "
                    f"{w60['level3_lp_solved']} ({fam} family, {w60['products_in_level3']} products)")
        if "dense_family_upper" in w60:
            w60_text += (f"; the dense family ({w60['dense_family_products']} products): "
                         f"{w60['dense_family_upper']:.5g} in {w60['dense_family_seconds']:.0f} s, "
                         f"solved: {w60['dense_family_solved']}")
    out += [
        "",
        "Targets:",
        "",
        f"* LipSDP-Neuron median on 10-10-1: {t['lipsdp_neuron_median_le_1.01x_exact_10_10_1']['value']:.5f} x exact "
        f"(target <= 1.01): met = {t['lipsdp_neuron_median_le_1.01x_exact_10_10_1']['met']}.",
        f"* lipkit's bracket no wider than eclipse-nn's on every supported net "
        f"({t['bracket_no_wider_than_eclipse']['networks']} nets): met = {t['bracket_no_wider_than_eclipse']['met']}.",
        f"* LiPopt-3 (l_inf) / exact at width <= 16: {'; '.join(parts)}: met = {lp['met']}.",
        f"* LiPopt-3 at width 60 within 3 minutes: {w60_text}; LiPopt-2: {w60['lipopt2_upper']:.4g} in "
        f"{w60['lipopt2_seconds']:.1f} s; naive {w60.get('naive_upper', float('nan')):.4g}; lower bound "
        f"{w60['lower_bound']:.4g}: met = {w60['met']}.",
        f"* Conv l2 bound (5 Gram iterations) / exact FFT norm, circular padding: worst "
        f"{t['conv_gram5_within_0.5pct_of_fft']['worst_over_exact']:.6f} (target <= 1.005): "
        f"met = {t['conv_gram5_within_0.5pct_of_fft']['met']}.",
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main()

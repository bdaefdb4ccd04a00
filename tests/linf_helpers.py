"""Shared test helper: a small l_inf-distance run config (digits-sized, one thread)."""

from __future__ import annotations

from lipkit.training.config import RunConfig


def linf_cfg(**kw) -> RunConfig:
    base = dict(name="t", model="linf-dist", p="inf", widths=[32, 32], loss="mix", margin=0.3,
                temperature=4.0, epochs=4, batch_size=64, lr=0.02, schedule="cosine", p_window=[0.25, 0.75],
                ce_weight=[0.5, 0.01], betas=[0.9, 0.99], adam_eps=1e-10, threads=1, seed=5,
                radii=[0.05, 0.1])
    base.update(kw)
    return RunConfig(**base)

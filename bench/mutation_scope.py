"""The scope of ``make mutate``: which functions of the soundness-critical code are mutation-tested.

One shard per entry of :data:`SHARDS` (``make mutate SHARD=<name>`` runs one); each lists, per module,
the functions whose mutants are run (``Class.method`` for a method).  mutmut generates mutants for the
files matched by ``[tool.mutmut] only_mutate`` in pyproject.toml; only the scoped functions are run.

To add code later (e.g. the certify/ round-off functions, the estimators' re-certification, the DP
sensitivities, the monotonic slope): add its file to ``only_mutate`` in pyproject.toml, its tests to
``pytest_add_cli_args_test_selection``, and a shard here, e.g.
``"certify": {"lipkit.certify.roundoff": ["linear_roundoff", ...]}``.

:data:`SURVIVORS` gives the reason each known surviving mutant survives (``conservative``: it only
loosens a bound; ``equivalent``: it computes the same thing, with a one-line argument; ``untestable``:
why no deterministic test can tell).  A mutant that tightens a bound must never be listed: kill it with a
test (tests/test_bounds_mutants.py).  Mutant numbers are mutmut's, stable while the function's source
is unchanged; a survivor missing here is reported as ``"reason": null`` (to triage).
"""

from __future__ import annotations

SHARDS: dict[str, dict[str, list[str]]] = {
    "numerics": {
        "lipkit.bounds.numerics": ["round_up", "operator_norm", "pairwise_head_bound"],
    },
    "registry": {
        "lipkit.bounds.registry": ["module_problem", "_base_class", "_hook_problem", "Facet.resolve",
                                   "lipschitz_bound", "_apply_rule", "chain_bound"],
    },
    "torch_rules": {
        "lipkit.bounds.torch_rules": ["_one", "_scalar", "batchnorm_scale"],
    },
    "conv": {
        "lipkit.bounds.conv": ["_conv_mixed_norm", "conv_module_norm", "conv_operator_norm", "_multiplicity"],
    },
    "sensitivity": {
        "lipkit.bounds.sensitivity": ["parameter_sensitivity", "max_patch_cover"],
    },
}

#: mutmut 3.8 skips decorated functions (a decorator runs at import time), so the
#: rules registered with ``@register_bound`` / ``@register_sensitivity`` get no mutants; listed here so
#: the report says so.
NOT_MUTATED: dict[str, list[str]] = {
    "lipkit.bounds.torch_rules": ["_softplus_rule", "_leaky_rule", "_elu_rule", "_dropout_rule",
                                  "_sequential_rule", "_linear_rule", "_bn_rule"],
    "lipkit.bounds.conv": ["_conv_rule"],
    "lipkit.bounds.sensitivity": ["_linear_sensitivity", "_conv_sensitivity"],
}

SURVIVORS: dict[str, tuple[str, str]] = {
}


def mangled(module: str, function: str) -> str:
    """mutmut's name prefix of the mutants of ``function`` (``Class.method`` for a method) in ``module``."""
    if "." in function:
        cls, meth = function.split(".")
        return f"{module}.x\u01c1{cls}\u01c1{meth}__mutmut_"
    return f"{module}.x_{function}__mutmut_"

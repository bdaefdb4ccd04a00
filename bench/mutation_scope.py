"""The scope of ``make mutate``: which functions of the soundness-critical code are mutation-tested.

One shard per entry of :data:`SHARDS` (``make mutate SHARD=<name>`` runs one); each lists, per module,
the functions whose mutants are run (``Class.method`` for a method).  mutmut generates mutants for the
files matched by ``[tool.mutmut] only_mutate`` in pyproject.toml; only the scoped functions are run.

To add code later (:data:`PENDING`): add its file to
``only_mutate`` in pyproject.toml, its tests to ``pytest_add_cli_args_test_selection`` (or, for this
shard only, to :data:`SHARD_TESTS`), and a shard here, e.g. ``"dp": {"lipkit.dp.sensitivity": [...]}``.

:data:`SURVIVORS` gives the reason each known surviving mutant survives (``conservative``: it only
loosens a bound; ``equivalent``: it computes the same thing, with a one-line argument; ``sound-tuning``:
it changes a tuning knob that only selects among candidates each proven sound; ``sound-margin``: a smaller
slack that the proof does not need, with the argument; ``report-only``: it changes a reported detail, not a
bound; ``killed-after-run``: a survivor of the recorded run that a test added after it kills (checked by
hand on the mutated code); ``margin-unreached``: it weakens a round-off margin inside a proof and no test
builds an input whose float64 error reaches that margin -- not shown harmless, an open item).  A mutant that
tightens a bound must never be listed: kill it with a test (tests/test_bounds_mutants.py).  Mutant
numbers are mutmut's, stable while the function's source is unchanged; a survivor missing here is
reported with ``"reason": null`` (to triage).
"""

from __future__ import annotations

SHARDS: dict[str, dict[str, list[str]]] = {
    "numerics": {
        "lipkit.bounds.numerics": ["round_up", "operator_norm", "pairwise_head_bound",
                                   "fp32_products_are_ieee"],
    },
    "registry": {
        "lipkit.bounds.registry": ["module_problem", "_base_class", "_hook_problem", "_forward_hook_problem",
                                   "Facet.resolve", "lipschitz_bound", "_apply_rule", "chain_bound"],
    },
    "torch_rules": {
        "lipkit.bounds.torch_rules": ["_one", "_scalar", "batchnorm_scale"],
    },
    "conv": {
        "lipkit.bounds.conv": ["_conv_mixed_norm", "conv_module_norm", "conv_operator_norm", "_multiplicity"],
    },
    "rules": {
        "lipkit.bounds.torch_rules": ["_softplus_rule", "_leaky_rule", "_elu_rule", "_dropout_rule",
                                      "_sequential_rule", "_linear_rule", "_bn_rule"],
        "lipkit.bounds.conv": ["_conv_rule"],
    },
    "sensitivity": {
        "lipkit.bounds.sensitivity": ["parameter_sensitivity"],
        "lipkit.bounds.windows": ["max_window_cover", "_cover_1d", "output_length"],
    },
    "roundoff": {
        "lipkit.certify.roundoff": ["margin_allowance", "affine_error", "_underflow", "_per_output_norm",
                                    "rounded_activation_error", "distance_terms", "linf_distance_error",
                                    "sortnet_error", "forward_error_bound"],
        "lipkit.certify.margin": ["_round_down", "pairwise_bound", "compute_certificates"],
    },
    "interval_rules": {
        "lipkit.bounds.interval": ["interval_forward", "widen", "_centre_radius", "_affine",
                                   "_weight_and_bias",
                                   "_linear", "_conv", "_avg_pool", "_batch_norm", "_exact_monotone",
                                   "monotone_rounded", "_max_pool", "_hardtanh", "_dropout", "_tanh_sigmoid",
                                   "_leaky_relu", "_elu"],
        "lipkit.nn.intervals": ["_dense_distance_box", "distance_layer_box", "_negate", "_sort", "_softplus"],
    },
    "interval_certify": {
        "lipkit.certify.interval": ["_negate", "_pad", "_check_chain", "_check_domain", "interval_bounds",
                                    "_check_eps", "reference_error", "_propagate", "_check_call",
                                    "interval_certified", "interval_certified_accuracy", "_union_with_margin",
                                    "_interval_test"],
    },
    "roundoff_checks": {
        "lipkit.certify.roundoff": ["is_plain_sequential", "chain_of", "computes_plain", "is_exact",
                                    "is_linf_distance", "is_sortnet", "_abs_operator_norm"],
    },
    "lipsdp_cert": {
        "lipkit.estimation.lipsdp": ["certified_upper", "_structure", "_lmi", "_eig_margin", "_proves_nsd",
                                     "_singular_mu", "certify_multipliers",
                                     "_certify_singular", "_dense_from_blocks", "_negated_blocks",
                                     "_verify_blocks", "_coupling_error", "_diagonal_error",
                                     "_residual_norm_bound", "_certify_blocks"],
    },
    "lipopt_cert": {
        "lipkit.estimation.lipopt": ["_certify", "_certify_const", "coefficient_errors", "_substitute",
                                     "_compact", "branch_and_bound_max", "_gradient_poly", "_lincomb",
                                     "_times_slope"],
    },
    "estimate_upper": {
        "lipkit.estimation": ["estimate", "local_upper"],
        "lipkit.estimation.naive": ["naive_upper"],
        "lipkit.estimation.local": ["_folded_norm", "naive_local_upper", "affine_local_upper",
                                    "activation_slope_range",
                                    "_comparators_box"],
        "lipkit.estimation._mlp": ["activation_slopes"],
    },
    # the per-example gradient bounds DP-SGD's noise is calibrated to (lipkit.dp, issue 18): the layers'
    # rules and the losses' logit constants, then their composition through the network
    "dp_rules": {
        "lipkit.bounds.sensitivity": ["_linear_sensitivity", "_conv_sensitivity"],
        "lipkit.nn.linear": ["_lip_linear_sensitivity"],
        "lipkit.nn.conv": ["_lip_conv_sensitivity"],
        "lipkit.nn.spline": ["_spline_sensitivity", "constraint_jacobian_norms"],
        "lipkit.losses": ["MulticlassHingeLoss.logit_lipschitz", "HKRLoss.logit_lipschitz",
                          "LipschitzCrossEntropyLoss.logit_lipschitz", "LogitMSELoss.logit_lipschitz"],
    },
    "dp_sensitivity": {
        "lipkit.dp.sensitivity": ["_norm_up", "_wide", "gram_bound", "gram_bound_fp32", "conv_gram_bound",
                                  "_schur_matrix",
                                  "fast_lipschitz", "_Walker.offset", "_Walker.walk", "_Walker.walk_chain",
                                  "_Walker.record", "network_sensitivity"],
    },
    # the DP projection step's certified norm bound (lipkit.dp.retraction, issue 18)
    "dp_retraction": {
        "lipkit.dp.retraction": ["_gamma", "_blocked_gram", "certified_newton_schulz", "_row_sum_bound",
                                 "_gram_error", "_step_is_covered", "_step_error", "certify",
                                 "certified_norm", "forget_certificates"],
    },
    # the slope lam of a monotonic network and the wrapper's own bound (lipkit.monotonic, issue 19)
    "monotonic_slope": {
        "lipkit.monotonic.network": ["_float_up", "slope_for", "MonotonicNetwork._cache_holds",
                                     "MonotonicNetwork.body_bound", "MonotonicNetwork.slope",
                                     "MonotonicNetwork.deployed_slope", "MonotonicNetwork.freeze",
                                     "MonotonicNetwork.verify_slope", "MonotonicNetwork.forward",
                                     "MonotonicNetwork.lipkit_skip_form", "_monotonic_rule"],
        "lipkit.monotonic.fastbound": ["_fast", "body_bound_1_inf"],
    },
}

#: code in the scope's soundness-critical area that is not mutated yet
PENDING: dict[str, str] = {}

#: the tests each shard runs against (mutmut's ``pytest_add_cli_args_test_selection`` for that shard);
#: a shard not listed uses the selection of ``[tool.mutmut]`` in pyproject.toml (the bounds/ tests)
_DEFAULT_TESTS = ["tests/test_bounds.py", "tests/test_bounds_exact.py", "tests/test_bounds_properties.py",
                  "tests/test_bound_facets.py", "tests/test_registry.py",
                  "tests/test_activation_constants.py", "tests/test_conv.py",
                  "tests/test_bounds_mutants.py"]  # pyproject.toml's selection

SHARD_TESTS: dict[str, list[str]] = {
    "conv": [*_DEFAULT_TESTS, "tests/test_pinned_allowances_estimators.py"],
    "roundoff": ["tests/test_roundoff.py", "tests/test_certify.py", "tests/test_roundoff_mutants.py",
                 "tests/test_spline.py::test_round_off_analysis_covers_splines",
                 "tests/test_spline.py::test_round_off_bound_of_a_spline_alone_is_its_spline_term",
                 "tests/test_monotonic_certify.py"],
    "interval_rules": ["tests/test_interval_facet.py", "tests/test_interval.py",
                       "tests/test_interval_mutants.py"],
    # test_interval.py without the two tests that train a network first (2.5 s each time)
    "interval_certify": ["tests/test_interval_mutants.py", "tests/test_pinned_allowances_estimators.py"] + [
        f"tests/test_interval.py::test_{t}" for t in (
        "boxes_contain_every_sampled_output", "one_distance_layer_box_is_exact",
        "bad_inputs_raise_clear_errors", "forward_error_bound_covers_float64_round_off_exactly_computed",
        "conv_boxes_contain_every_sampled_output",
        "conv_distance_box_equals_the_dense_box_of_each_patch",
        "conv_net_interval_certificate_is_never_looser_than_the_margin")],
    "roundoff_checks": ["tests/test_roundoff_checks.py", "tests/test_roundoff.py", "tests/test_certify.py",
                        "tests/test_roundoff_mutants.py", "tests/test_interval.py"],
    # the estimators: the exact tests of tests/test_estimate_mutants.py and a few fast end-to-end ones (the
    # SCS solves and lower bounds of the others add seconds per mutant and nothing the exact checks do not)
    "lipsdp_cert": ["tests/test_estimate_mutants.py", "tests/test_lipsdp_margin_mutants.py",
                    "tests/test_pinned_allowances_estimators.py",
                    "tests/test_estimate.py::test_certified_rho_is_verified_and_tight"],
    "lipopt_cert": ["tests/test_estimate_mutants.py", "tests/test_lipopt_margin_mutants.py"] + [
        f"tests/test_estimate.py::test_{t}" for t in (
        "krivine_max_bounds_random_multilinear_polys_and_is_exact_at_full_degree",
        "lipopt_branch_and_bound_closes_the_gap_of_a_low_degree", "lipopt_with_bias_and_leaky_relu_is_sound",
        "lipopt_deep_bounds_the_vertex_maximum")],
    "dp_rules": ["tests/test_dp_mutants.py", "tests/test_dp_sensitivity.py",
                 "tests/test_pinned_allowances_dp.py",
                 "tests/test_spline.py::test_sensitivity_rule_against_per_example_gradients"],
    "dp_sensitivity": ["tests/test_dp_mutants.py", "tests/test_dp_certified.py",
                       "tests/test_dp_sensitivity.py", "tests/test_pinned_allowances_dp.py"],
    "dp_retraction": ["tests/test_dp_certified.py", "tests/test_dp_retraction_mutants.py"],
    "monotonic_slope": ["tests/test_monotonic.py", "tests/test_monotonic_certify.py",
                        "tests/test_monotonic_export.py", "tests/test_monotonic_mutants.py",
                        "tests/test_pinned_allowances_monotonic.py"],
    "estimate_upper": ["tests/test_estimate_mutants.py", "tests/test_local_margin_mutants.py",
                       "tests/test_pinned_allowances_estimators.py"] + [
        f"tests/test_estimate_local.py::test_{t}" for t in (
        "local_is_exact_where_no_relu_can_switch_and_tighter_than_global",
        "dead_network_on_the_domain_has_constant_zero", "preactivation_bounds_enclose_every_preactivation",
        "local_domain_errors", "local_on_groupsort_nets_is_sound_and_exact_where_no_comparator_switches")],
}

#: mutmut 3.8 skips decorated functions (a decorator runs at import time), so a rule registered with the
#: decorator syntax gets no mutants: the rules in scope are registered with ``register_bound(...)(rule)`` or
#: ``register_sensitivity(...)(rule)`` after their definition instead (same behaviour).  None is left out.
NOT_MUTATED: dict[str, list[str]] = {}

_N = "lipkit.bounds.numerics."
_R = "lipkit.bounds.registry."
_T = "lipkit.bounds.torch_rules."
_C = "lipkit.bounds.conv."
_S = "lipkit.bounds.sensitivity."
_W = "lipkit.bounds.windows."

#: (kind, reason, mutants): the triaged survivors
_TRIAGE: list[tuple[str, str, list[str]]] = [
    ("conservative", "round_up inflates more (a larger n_ops or factor): the bound is looser, still sound",
     [_N + "x_round_up__mutmut_1", _N + "x_round_up__mutmut_7", _N + "x_round_up__mutmut_12",
      _N + "x_operator_norm__mutmut_37", _N + "x_operator_norm__mutmut_60", _N + "x_operator_norm__mutmut_76",
      _N + "x_operator_norm__mutmut_95", _R + "x_chain_bound__mutmut_21", _R + "x_chain_bound__mutmut_74",
      _C + "x_conv_operator_norm__mutmut_164", _C + "x__conv_mixed_norm__mutmut_21",
      _C + "x__conv_mixed_norm__mutmut_52"]),
    ("equivalent", "the observer mark is tested for truth: a default of None or False is the same",
     [_R + "x__hook_problem__mutmut_3"]),
    ("equivalent", "every UnsupportedModuleError has a `module` attribute (its __init__ sets it), so the "
     "getattr default is never used", [_R + "x_lipschitz_bound__mutmut_56"]),
    ("equivalent", "p == q is handled by the branch before, so `<` and `<=` agree on the norms that reach it",
     [_R + "x__apply_rule__mutmut_24", _R + "x_chain_bound__mutmut_24"]),
    ("equivalent", "an error raised without its module gets it from lipschitz_bound, which sets exc.module "
     "when it is None", [_R + "x__apply_rule__mutmut_41", _R + "x__apply_rule__mutmut_43"]),
    ("equivalent", "every class of registered.__mro__[:-1] is snapshotted when its rule is registered "
     "(_snapshot walks the same MRO), so `snap is None` never holds and continue/break never run",
     [_R + "x_module_problem__mutmut_22"]),
    ("equivalent", "the loop over base.__mro__ (never empty) reassigns `rule` before it is read",
     [_R + "xǁFacetǁresolve__mutmut_7"]),
    ("equivalent", "torch's batch norms have weight None exactly when affine is False, so `and`/`or` agree",
     [_T + "x_batchnorm_scale__mutmut_16"]),
    ("equivalent", "zip's strict flag: the zipped sequences have 2 entries each by construction (a conv1d "
     "is embedded as a conv2d of height 1 first)",
     [_C + f"x_conv_operator_norm__mutmut_{i}" for i in (111, 115, 116, 175, 178, 179)]),
    ("equivalent", "extra == 0 multiplies rep by 1 (1 + 0 without the size, ceil(n / n) = 1 with it)",
     [_C + "x_conv_operator_norm__mutmut_185"]),
    ("conservative", "circular padding: a larger row repetition count rep (1 + extra >= "
     "ceil((n + extra) / n), 2 + extra > 1 + extra) only enlarges the padding factor",
     [_C + "x_conv_operator_norm__mutmut_190", _C + "x_conv_operator_norm__mutmut_192"]),
    ("equivalent", "_one does not read `shapes`", [_T + "x__scalar__mutmut_4"]),
    ("equivalent", "reflect padding maps idx = 0 to -0 = 0, so `idx < 0`, `idx <= 0` and `idx < 1` agree",
     [_C + "x__multiplicity__mutmut_46", _C + "x__multiplicity__mutmut_47"]),
    ("equivalent", "minlength only appends zero counts, which do not change the maximum",
     [_C + "x__multiplicity__mutmut_78"]),
    ("equivalent", "a conv1d's height-1 kernel dilated by any factor is the same kernel",
     [_C + "x_conv_operator_norm__mutmut_89"]),
    ("conservative", "a height-1 kernel on 2 rows is two copies of the 1-row map (same norm); only the "
     "explicit "
     "candidate's error term and size threshold grow", [_C + "x_conv_operator_norm__mutmut_97"]),
    ("conservative", "the padding multiplicity for every size (no size) dominates the one for the known size",
     [_C + "x_conv_operator_norm__mutmut_128", _C + "x_conv_operator_norm__mutmut_133"]),
    ("equivalent", "zip's strict flag: stride and kernel have 2 entries each after the 1-D embedding",
     [_C + f"x_conv_operator_norm__mutmut_{i}" for i in (235, 238, 239)]),
    ("equivalent", "with exact_max_dim = 0 the inner test n_in <= exact_max_dim fails anyway (n_in >= 1)",
     [_C + "x_conv_operator_norm__mutmut_249"]),
    ("conservative", "drops the explicit-matrix candidate for 1-entry inputs: a minimum over fewer sound "
     "candidates", [_C + "x_conv_operator_norm__mutmut_250"]),
    ("sound-tuning", "the size threshold of the explicit-matrix candidate (sound on its own: SVD rounded up) "
     "only decides whether it joins the minimum",
     [_C + f"x_conv_operator_norm__mutmut_{i}" for i in (254, 255, 256, 259)]),
    ("equivalent", "zip's strict flag: size and pads have 2 entries each after the 1-D embedding",
     [_C + f"x_conv_operator_norm__mutmut_{i}" for i in (286, 289, 290)]),
    ("conservative", "round_up of the grid / torus candidate inflates more (5 instead of 4 operations)",
     [_C + "x_conv_operator_norm__mutmut_307", _C + "x_conv_operator_norm__mutmut_325"]),
    ("sound-margin", "smaller slack, still sound: after the rounded-up grid / torus bound only sqrt(integer) "
     "and one product follow (relative error <= 2u = eps64), which round_up with n_ops = 1 (4 eps64) "
     "covers; only the documented 16 eps64 margin shrinks",
     [_C + "x_conv_operator_norm__mutmut_305", _C + "x_conv_operator_norm__mutmut_323"]),
    ("sound-tuning", "a forced frequency grid is ignored: _torus_bound then picks its grid by the budget, "
     "and "
     "its Bernstein factor makes the bound sound for every grid",
     [_C + "x_conv_operator_norm__mutmut_312", _C + "x_conv_operator_norm__mutmut_337"]),
    ("sound-tuning", "also adds the polyphase candidates at stride 1, where the polyphase form is the map "
     "itself: more sound candidates in the minimum", [_C + "x_conv_operator_norm__mutmut_327"]),
    ("equivalent", "_one does not read `shapes`",
     [_T + f"x_{f}__mutmut_{i}" for f, i in (("_leaky_rule", 4), ("_elu_rule", 4), ("_dropout_rule", 20),
                                             ("_bn_rule", 4))]),
    ("equivalent", "p != q in this branch, so norm_order(p) != norm_order(q) and `>=` is `>`",
     [_C + "x__conv_rule__mutmut_15"]),
    ("sound-tuning", "exact_max_dim only decides whether the explicit-matrix candidate (its SVD rounded up, "
     "sound on its own) joins the minimum; 1025 instead of 1024 adds it for inputs of exactly 1025 entries",
     [_C + "x_conv_operator_norm__mutmut_9"]),
    ("equivalent", "every class of a registered class's MRO is snapshotted when the rule is registered "
     "(computes_as snapshots its classes too), so `snap is None` never holds and continue/break agree",
     [_R + "x_module_problem__mutmut_23"]),
    ("equivalent", "torch tensors always have _backward_hooks and _post_accumulate_grad_hooks attributes, so "
     "getattr without a default returns the same", [_R + "x_module_problem__mutmut_69",
                                                    _R + "x_module_problem__mutmut_76"]),
    ("equivalent", "n_out is only read when the size is known; without it _cover_1d returns on `n is None`",
     [_W + "x_max_window_cover__mutmut_22"]),
    ("equivalent", "max_window_cover passes n and n_out both None or both set, so `or` and `and` agree",
     [_W + "x__cover_1d__mutmut_1"]),
    ("equivalent", "as r runs over all residues mod s so does -r: the maximum over r is the same",
     [_W + "x__cover_1d__mutmut_9"]),
    ("equivalent", "the default only serves an empty dimension, whose count max_window_cover raises to 1 "
     "anyway", [_W + "x__cover_1d__mutmut_34"]),
    ("sound-tuning", "the flop budget only decides which (each sound) grid candidates are computed; ignoring "
     "an explicit budget cannot make the minimum unsound, and the default budget is the same",
     [_C + "x_conv_operator_norm__mutmut_14"]),
]

_RO = "lipkit.certify.roundoff."
_MG = "lipkit.certify.margin."

_TRIAGE += [
    ("equivalent", "the affine layers (nn.Linear, nn.Conv1d/2d) always have a `bias` attribute (None without "
     "bias), so the getattr default is never used", [_RO + "x_affine_error__mutmut_9"]),
    ("equivalent", "the distance layers always register `running_mean` (a buffer, None without mean shift), "
     "so the getattr default is never used", [_RO + "x_distance_terms__mutmut_20"]),
    ("equivalent", "for p = inf, n_outputs ** (1.0 / p) = n_outputs ** 0.0 = 1.0, the value of the branch",
     [_RO + "x__underflow__mutmut_3"]),
    ("equivalent", "one more prefix bound, of the whole chain, is computed and never read (the loop reads "
     "prefix[0..len(chain)])", [_RO + "x_forward_error_bound__mutmut_22"]),
    ("equivalent", "a float32 zero total: zero is exact in any dtype and the first float64 term added "
     "promotes "
     "the sum to float64 (an all-exact chain returns zeros, the same bound)",
     [_RO + "x_forward_error_bound__mutmut_40", _RO + "x_forward_error_bound__mutmut_43"]),
    ("equivalent", "device=None is the CPU, the device of every tensor here (lipkit certifies on the CPU; on "
     "another device the mismatch raises, it cannot change a bound silently)",
     [_RO + "x_forward_error_bound__mutmut_41", _RO + "x_forward_error_bound__mutmut_44",
      _MG + "x_compute_certificates__mutmut_83", _MG + "x_compute_certificates__mutmut_87",
      _MG + "x_compute_certificates__mutmut_106"]),
    ("equivalent", "Tensor.to(None) leaves the float32 logits as they are, and float32 - float64 promotes "
     "them to float64 exactly before subtracting: the same observed error",
     [_MG + "x_compute_certificates__mutmut_154"]),
]



def mangled(module: str, function: str) -> str:
    """mutmut's name prefix of the mutants of ``function`` (``Class.method`` for a method) in ``module``."""
    if "." in function:
        cls, meth = function.split(".")
        return f"{module}.x\u01c1{cls}\u01c1{meth}__mutmut_"
    return f"{module}.x_{function}__mutmut_"

_IB = "lipkit.bounds.interval."
_NI = "lipkit.nn.intervals."
_CI = "lipkit.certify.interval."

_TRIAGE += [
    # ---------------------------------------------------------------- interval_rules
    ("conservative", "a radius four times the half-width: a wider box around the same centre",
     [_IB + "x__centre_radius__mutmut_5"]),
    ("equivalent", "apply(c, None): every apply tests `absolute` for truth, and None is falsy like False",
     [_IB + "x__affine__mutmut_8"]),
    ("equivalent", "Linear and Conv layers always have a `bias` attribute (None without bias), so the "
     "getattr "
     "default is never used", [_IB + "x__weight_and_bias__mutmut_11"]),
    ("equivalent", "F.linear's bias defaults to None", [_IB + "x__linear__mutmut_9"]),
    ("equivalent", "Tensor.to(None) keeps the dtype; a float32 statistic or parameter is promoted to float64 "
     "exactly by the float64 operand it meets", [_IB + f"x__batch_norm__mutmut_{i}" for i in (21, 28, 35)]),
    ("conservative", "a larger error term (fan 5 instead of 4; |b| = 1 instead of 0 without affine)",
     [_IB + "x__batch_norm__mutmut_71", _IB + "x__batch_norm__mutmut_60"]),
    ("conservative", "a larger widening of monotone activations (scale 2 by default, factor 9 or 8 / EPS64)",
     [_IB + f"x_monotone_rounded__mutmut_{i}" for i in (1, 13, 14)]),
    ("conservative", "a larger widening scale (2 + alpha, 2 / beta)",
     [_IB + "x__elu__mutmut_20", _NI + "x__softplus__mutmut_10"]),
    ("equivalent", "Tensor.to(None) keeps the dtype: float32 weights, means and biases are promoted to "
     "float64 "
     "exactly by the float64 box they are subtracted from or added to; the SortNet coefficients are float64 "
     "already", [_NI + f"x__dense_distance_box__mutmut_{i}" for i in (2, 17, 112, 118)]),
    ("equivalent", "the block size only splits the rows into chunks, each boxed independently",
     [_NI + "x__dense_distance_box__mutmut_9", _NI + "x__dense_distance_box__mutmut_13"]),
    ("conservative", "K = 2 for an l_inf-distance layer: a larger error term",
     [_NI + "x__dense_distance_box__mutmut_21"]),
    ("conservative", "a larger error term (3 instead of 2, K + 4 instead of K + 3)",
     [_NI + "x__dense_distance_box__mutmut_127", _NI + "x__dense_distance_box__mutmut_129"]),
    ("equivalent", "a float32 zero (dtype None / default) is promoted exactly by the float64 operand",
     [_NI + f"x__dense_distance_box__mutmut_{i}" for i in (54, 56, 95, 98)]),
    ("equivalent", "topk's dim defaults to -1", [_NI + "x__dense_distance_box__mutmut_73",
                                                 _NI + "x__dense_distance_box__mutmut_85"]),
    ("equivalent", "device=None is the CPU, the device of every tensor here (as in the roundoff shard)",
     [_NI + "x__dense_distance_box__mutmut_96", _NI + "x__dense_distance_box__mutmut_99"]),
    ("equivalent", "a distance layer registers running_mean exactly when mean_shift is on (None otherwise, "
     "nn/distance/layers.py), so `and`/`or` agree and the getattr default is never used",
     [_NI + "x__dense_distance_box__mutmut_102", _NI + "x__dense_distance_box__mutmut_107"]),
    # ---------------------------------------------------------------- interval_certify
    ("conservative", "a larger input padding (2 + scale)", [_CI + "x__pad__mutmut_4"]),
    ("equivalent", "a float32 zero reference error (dtype None / default) is promoted exactly by the first "
     "float64 error added, or stays an exact zero",
     [_CI + "x__propagate__mutmut_20", _CI + "x__propagate__mutmut_23"]),
    ("equivalent", "device=None is the CPU, the device of every tensor here",
     [_CI + f"x__propagate__mutmut_{i}" for i in (21, 24)] + [_CI + f"x__interval_test__mutmut_{i}"
                                                                for i in (21, 25)]),
    ("conservative", "the Lipschitz intersection is skipped (for every layer, or for some distance, SortNet, "
     "Negate or shape layers): the boxes are the interval rules' own, each sound",
     [_CI + f"x__propagate__mutmut_{i}" for i in (26, 27, 37, 38, 39, 40, 41, 42, 43)]),
    ("equivalent", "None is falsy like False",
     [_CI + "x__propagate__mutmut_47", _CI + "x__propagate__mutmut_76"]),
    ("conservative", "the l2 bound of the prefix (lipschitz_bound's default norm) instead of the l_inf one: "
     "for "
     "the distance, SortNet, Negate and shape layers of the intersection phase it is >= 1, their exact l_inf "
     "constant, so the intersection is wider", [_CI + "x__propagate__mutmut_73"]),
    ("sound-margin", "the bound of one layer fewer: every prefix of distance, SortNet, Negate and shape "
     "layers is exactly 1-Lipschitz for l_inf and lipschitz_bound returns 1 rounded up (>= 1) for any of "
     "them, so the shorter prefix's bound is still a valid one", [_CI + "x__propagate__mutmut_74"]),
    ("conservative", "the bound of one layer more (a longer prefix, >= the right one)",
     [_CI + "x__propagate__mutmut_75"]),
    ("equivalent", "unreachable: every layer of the intersection phase (distance at p = inf, SortNet, "
     "Negate, "
     "shape layers) has a registered l_inf bound, so lipschitz_bound does not raise there (and a prefix "
     "without a bound stays without one, so `intersect` would not matter either)",
     [_CI + "x__propagate__mutmut_77", _CI + "x__propagate__mutmut_78"]),
    ("conservative", "a larger Lipschitz or reference-error slack (2 or 2 + 1e-9 instead of 1 + 1e-9)",
     [_CI + f"x__propagate__mutmut_{i}" for i in (87, 88, 91, 92)]),
    ("sound-margin", "the reference error 4u (d + |mu| + |b|) (2 (K + 3) u (D + ...) for SortNet) already "
     "has "
     "u (d + |mu| + |b|) to spare over the 3u (1 + u)^2 (...) it bounds (roundoff.linf_distance_error, "
     "sortnet_error); 1e-9 relative less stays above that",
     [_CI + "x__propagate__mutmut_89", _CI + "x__propagate__mutmut_90"]),
    ("sound-margin", "the 1e-12 (1 + |h|) padding of the intersection shrinks to 1e-12 / (1 + |h|): the "
     "reference error's spare u |h| (see above) and the (1 + 1e-9) factors still cover the half-ulp rounding "
     "of h -/+ slack", [_CI + "x__propagate__mutmut_101"]),
    ("conservative", "a larger padding (2 + |h|)", [_CI + "x__propagate__mutmut_103"]),
    ("equivalent", "batch_size only splits the interval test into chunks, each computed independently (a "
     "different default, or the default instead of the caller's)",
     [_CI + "x_interval_certified__mutmut_1", _CI + "x_interval_certified__mutmut_47",
      _CI + "x_interval_certified_accuracy__mutmut_1", _CI + "x_interval_certified_accuracy__mutmut_59",
      _CI + "x__union_with_margin__mutmut_1"]),
    ("equivalent", "Tensor.to(None) keeps y where it is (the CPU, with the predictions)",
     [_CI + "x_interval_certified_accuracy__mutmut_40"]),
    ("conservative", "an input whose margin radius is exactly eps is not certified by the margin; it faces "
     "the "
     "interval test instead", [_CI + "x__union_with_margin__mutmut_3"]),
    ("equivalent", "overlapping chunks (step 1, or a slice from 0 or to the end) recompute the same "
     "deterministic answers for the inputs they share",
     [_CI + f"x__union_with_margin__mutmut_{i}" for i in (23, 26, 27, 28)]),
    ("equivalent", "forward_error_bound's input_shape defaults to None",
     [_CI + "x__interval_test__mutmut_36"]),
    ("equivalent", "float32 deployed logits minus the float64 twin's: the float32 operand is promoted "
     "exactly",
     [_CI + "x__interval_test__mutmut_58"]),
]


_LS = "lipkit.estimation.lipsdp."
_LO = "lipkit.estimation.lipopt."
_ES = "lipkit.estimation."
_LC = "lipkit.estimation.local."

_TRIAGE += [
    # ---------------------------------------------------------------- lipsdp_cert
    ("equivalent", "each off-diagonal block, and the diagonal of each hidden block, is written once before "
     "any other term reaches it, so `=` and `+=` agree",
     [_LS + f"x__dense_from_blocks__mutmut_{i}" for i in (56, 58, 60, 63, 78)]),
    ("sound-tuning", "the singular certificate rho + mu (1 + K^2), mu >= lambda_max(M(rho)) + tau, holds for "
     "every rho >= 0 (module docstring): these mutants only change which rho (or which candidate directions "
     "and multipliers) it is evaluated at, and the minimum is over valid bounds",
     [_LS + f"x__certify_singular__mutmut_{i}" for i in (21, 33, 34, 37, 38, 41, 43, 44, 45, 48, 49, 57,
                                                         58, 59, 60, 61, 62, 63, 64, 65, 67, 68, 69, 70, 71,
                                                         72)]),
    ("equivalent", "_structure always sets a finite K2, so `or`/`and` agree; P has at least one eigenvalue, "
     "so max's initial value is never used",
     [_LS + "x__certify_singular__mutmut_9", _LS + "x__certify_singular__mutmut_31"]),
    ("conservative", "a larger margin tau or mu (/ EPS64, 2 + K^2): a larger bound",
     [_LS + f"x__certify_singular__mutmut_{i}" for i in (82, 106)]),
    ("sound-tuning", "the inflation schedule of rho (deltas, offsets) only chooses the candidates; every "
     "returned rho is proven by _verify_blocks or the dense eigenvalue check first",
     [_LS + f"x__certify_blocks__mutmut_{i}" for i in (18, 19, 20, 21, 23, 24, 25, 28, 39, 40, 41, 42, 44, 45,
                                                       46, 47, 48, 49)]),
]

_TRIAGE += [
    # ---------------------------------------------------------------- lipopt_cert
    ("conservative", "a coefficient without a recorded error gets the error 1.0 instead of 0: larger errors",
     [_LO + "x__substitute__mutmut_8"]),
    ("sound-tuning", "branch and bound returns the largest certified bound over every open and closed leaf "
     "at whatever point it stops (docstring), so the time budget, the node budget, the gap test, the "
     "tie-break counters, the branching variable and the sparse-clique choice passed on only decide when it "
     "stops and where it branches",
     [_LO + f"x_branch_and_bound_max__mutmut_{i}" for i in (1, 3, 5, 26, 28, 31, 33, 34, 35, 41, 42, 47, 48,
                                                           77, 87, 88, 97, 98, 99, 100, 101, 102, 106, 121,
                                                           123, 126, 127)]),
    ("equivalent", "the root bound passed in is the one bound() computes (same polynomial, same LP): "
     "recomputing it only costs time", [_LO + "x_branch_and_bound_max__mutmut_54"]),
    ("equivalent", "the marginals and the node count of a constant leaf are never read: a leaf with k = 0 is "
     "closed at once", [_LO + f"x_branch_and_bound_max__mutmut_{i}" for i in (21, 22, 23, 24, 25)]),
    ("equivalent", "after a node without free variables the heap is empty (such a node is only the root of "
     "a constant polynomial: every other constant leaf is closed when created), so `break` and `continue` "
     "agree",
     [_LO + "x_branch_and_bound_max__mutmut_118"]),
    ("conservative", "at the time limit the search returns None, so its caller fails (estimate then falls "
     "back to the next sound method): no bound is made smaller",
     [_LO + "x_branch_and_bound_max__mutmut_107"]),
    ("sound-tuning", "closing a node records its certified bound in closed_max, keeping it open keeps it in "
     "the heap: the returned upper covers it either way, so which nodes are closed (leaf test, gap test) "
     "only decides the work done",
     [_LO + f"x_branch_and_bound_max__mutmut_{i}" for i in (144, 146, 154, 162, 164, 165, 166, 167, 168, 169,
                                                           181, 182, 183)]),
    ("equivalent", "_substitute treats every value other than 0 as 1, so branching on (0, 2) is branching on "
     "(0, 1)", [_LO + "x_branch_and_bound_max__mutmut_129"]),
]

_TRIAGE += [
    ("conservative", "the constant of |2u - 1| becomes 2: a larger absolute polynomial, larger error terms",
     [_LO + "x__gradient_poly__mutmut_12"]),
    ("equivalent", "sgn is 1 or -1, so -1 / sgn = -1 * sgn",
     [_LO + "x__gradient_poly__mutmut_25", _LO + "x__gradient_poly__mutmut_79"]),
    ("equivalent", "zip's strict flag: the zipped lists have equal lengths by construction (one entry per "
     "output / per neuron)", [_LO + f"x__gradient_poly__mutmut_{i}" for i in (86, 89, 90)]
     + [_LO + f"x__lincomb__mutmut_{i}" for i in (4, 7, 8)]),
    ("equivalent", "every monomial of q maps to a distinct monomial (var is new to all of them), so nothing "
     "accumulates and out.get(...) is 0 either way",
     [_LO + "x__times_slope__mutmut_6", _LO + "x__times_slope__mutmut_19"]),
]

_TRIAGE += [
    ("conservative", "a larger error or rounding term (k + 3, 3 m + 2, 2 m + 3, or the number of products, "
     "which is at least the number of monomials: every monomial is a product of its own literals)",
     [_LO + f"x__certify__mutmut_{i}" for i in (15, 36, 37, 38)]),
    ("equivalent", "gamma_k written as k u (1 - k u) or k u / (1 + k u) instead of k u / (1 - k u): a "
     "relative change of (k u)^2 of a term that is itself ~1e-15 of the total, lost in the float64 sum",
     [_LO + "x__certify__mutmut_19", _LO + "x__certify__mutmut_21"]),
    ("killed-after-run", "drops the row's other terms or flips |lambda| in the constant row's absolute sum: "
     "killed by tests/test_lipopt_margin_mutants.py::test_certify_counts_the_whole_absolute_sum_of_a_dense_"
     "constant_row (a 60-entry constant row, where the dropped terms move the bound by ~400 EPS64; added "
     "after the lipopt_cert run, checked by hand on both mutated functions)",
     [_LO + "x__certify__mutmut_9", _LO + "x__certify__mutmut_10"]),
]

_TRIAGE += [
    # ---------------------------------------------------------------- estimate_upper
    ("sound-tuning", "which solver candidates local_upper computes (depth and fixed-neuron tests, LiPopt's "
     "degree, iteration and time budgets): every candidate is a sound bound of the local constant and the "
     "result is their minimum", [_ES + f"x_local_upper__mutmut_{i}" for i in
                                 (28, 29, 30, 33, 43, 48, 49, 50, 51, 53, 60, 65, 66, 73)]),
    ("conservative", "the solver candidate is computed without the domain's slope ranges (the global bound, "
     "which is also valid on the domain) or without the input shape (a CNN then fails over to the naive "
     "bound)", [_ES + f"x_local_upper__mutmut_{i}" for i in (45, 61, 62, 67, 68)]),
    ("killed-after-run", "the round-off term gamma ||J_abs|| with the operator norm for p = 2 (not the "
     "Frobenius norm), or with inner counted from 1: killed by tests/test_local_margin_mutants.py::"
     "test_affine_local_upper_of_a_cancelling_net_is_its_documented_round_off_term once its weights are "
     "dyadic (exact Jacobian 0 also in float64, so the bound is the round-off term alone; fixed after the "
     "estimate_upper run, checked by hand on the mutated function)",
     [_LC + "x_affine_local_upper__mutmut_7", _LC + "x_affine_local_upper__mutmut_42"]),
    ("sound-margin", "the final round_up with its default 1 operation (slack 8 u) instead of 4: after the "
     "documented terms are formed only two roundings remain (gamma times the norm, then the sum), and "
     "gamma_2 < 8 u", [_LC + "x_affine_local_upper__mutmut_57"]),
    ("conservative", "a larger round-off term (3 instead of 2, one more operation per layer or in all)",
     [_LC + f"x_affine_local_upper__mutmut_{i}" for i in (33, 37, 40)]),
]

_TRIAGE += [
    ("equivalent", "the method name is lower-cased before use, so a default of 'NAIVE' is 'naive'",
     [_ES + "x_estimate__mutmut_3"]),
    ("equivalent", "initial values overwritten before use: the loop sets upper and used on the first method "
     "that succeeds (naive raises rather than fail silently), and an empty hints string is falsy like None",
     [_ES + f"x_estimate__mutmut_{i}" for i in (50, 51, 53)]),
    ("equivalent", "with a domain, lower_bound takes the shape from the domain itself (as local_upper does)",
     [_ES + "x_estimate__mutmut_44"]),
    ("sound-tuning", "a non-None domain for the global methods only stops LiPopt's hint points from reaching "
     "the lower-bound search (still a valid lower bound); the upper bound is unchanged",
     [_ES + "x_estimate__mutmut_31"]),
]

_TRIAGE += [
    ("sound-tuning", "the solver's time budget, and the LiPopt hint points handed to the lower-bound search "
     "(the lower bound stays a value attained by a real point or pair)",
     [_ES + f"x_estimate__mutmut_{i}" for i in (59, 68, 69, 72, 73)]),
    ("equivalent", "the naive bound is recomputed instead of reused when the method was naive: the same "
     "value",
     [_ES + f"x_estimate__mutmut_{i}" for i in (91, 94, 95)]),
]

_TRIAGE += [
    ("equivalent", "when the method's bound equals the naive one the reported upper is the same; only "
     "details['method_upper'] is added", [_ES + "x_estimate__mutmut_110"]),
    ("sound-tuning", "the hints and input shape handed to the lower-bound search: the lower bound stays a "
     "value attained by a real point or pair, whatever it is given",
     [_ES + f"x_estimate__mutmut_{i}" for i in (121, 122, 123, 124, 125, 126, 127, 131, 135)]),
    ("report-only", "a reported detail (the lower bound's witness, the seconds), not a bound",
     [_ES + f"x_estimate__mutmut_{i}" for i in (145, 148, 149, 155, 164)]),
    ("equivalent", "the intervals arrive as float64 arrays (Python floats become float64 too), and "
     "np.ones_like(None) broadcasts like the ones it replaces",
     [_LC + f"x_activation_slope_range__mutmut_{i}" for i in (3, 5, 8, 10, 12)]),
    ("equivalent", "nn.ReLU6 is an nn.Hardtanh with min_val 0 and max_val 6",
     [_LC + "x_activation_slope_range__mutmut_86", _LC + "x_activation_slope_range__mutmut_91"]),
]

_TRIAGE += [
    ("equivalent", "has_neg means lo < 0, where min(lo, 1) = min(lo, 0); s_hi is only read when hi <= 0, "
     "where min(hi, 1) = min(hi, 0)", [_LC + "x_activation_slope_range__mutmut_151",
                                 _LC + "x_activation_slope_range__mutmut_156"]),
    ("conservative", "an interval starting exactly at ELU's kink (lo = 0) gets both one-sided slopes, one "
     "ending exactly at a Hardtanh corner is not called flat: wider slope ranges",
     [_LC + "x_activation_slope_range__mutmut_158", _LC + "x_activation_slope_range__mutmut_102"]),
]

_TRIAGE += [
    ("equivalent", "the multipliers arrive as float64 arrays (np.asarray keeps them)",
     [_LS + "x_certify_multipliers__mutmut_7", _LS + "x_certify_multipliers__mutmut_9"]),
    ("equivalent", "unreachable: lam has at least one entry (every network here has a free neuron), so the "
     "empty-array branch of `top` never runs", [_LS + "x_certify_multipliers__mutmut_18",
                                                _LS + "x_certify_multipliers__mutmut_20"]),
    ("sound-tuning", "the repair candidates (scaled, lifted and tilted multipliers) and the positivity "
     "threshold on P only choose which multipliers are tried; each rho returned is proven by the eigenvalue "
     "check M(rho, T) <= -tau I (or by the singular certificate)",
     [_LS + f"x_certify_multipliers__mutmut_{i}" for i in (17, 22, 24, 25, 26, 27, 28, 31, 32, 33, 34, 35, 36,
                                                          37, 38, 39, 40, 41, 44, 47, 53, 59, 60, 63, 64, 80,
                                                          81, 87, 111, 112, 113, 43, 52, 54, 55, 56, 57, 58,
                                                          90, 114, 116)]),
    ("sound-tuning", "eta is a free shift of the block proof: A - eta I = L D L^T + E with D >= 0 and "
     "||E|| <= eta gives A >= 0 for every eta (the check is made with the eta used), so eta's absolute part "
     "1e-300 or -1e-300 only chooses the shift", [_LS + "x__verify_blocks__mutmut_30"]),
    ("killed-after-run", "the rounding factor without the output dimension of WL^T WL (dropped, or WL's "
     "column "
     "count instead): killed by tests/test_"
     "lipsdp_margin_mutants.py::test_block_proof_counts_the_output_dimension_in_its_rounding_factor (a WL of "
     "200 rows; added after the lipsdp_cert run, checked by hand on the mutated function)",
     [_LS + "x__verify_blocks__mutmut_16", _LS + "x__verify_blocks__mutmut_19"]),
    ("conservative", "the first block's D and Schur terms set to 1 instead of 0: a larger error bound",
     [_LS + "x__verify_blocks__mutmut_50"]),
    ("conservative", "a larger round_up count (5, 9, 3 operations)",
     [_LS + "x__coupling_error__mutmut_10", _LS + "x__diagonal_error__mutmut_13",
      _LS + "x__residual_norm_bound__mutmut_20"]),
    ("sound-margin", "round_up with its default count 1 instead of 4 / 8 / 2: it still inflates by 8 u "
     "(u = 2^-53) plus one step, above the relative error of the expression's own roundings (at most 3, 6 "
     "and 2 roundings of nonnegative terms: <= 3 u, 6 u, 2 u to first order), and these sums are themselves "
     "bounds with a gam = 4 (n + 4) EPS64 factor", [_LS + "x__coupling_error__mutmut_4",
                                                     _LS + "x__diagonal_error__mutmut_4",
                                                     _LS + "x__residual_norm_bound__mutmut_17"]),
    ("equivalent", "unreachable: D[b - 1] was appended only after its smallest eigenvalue passed the "
     "positivity test, so its Cholesky factorisation does not fail", [_LS + "x__verify_blocks__mutmut_55"]),
]

_TRIAGE += [
    ("equivalent", "the diagonal of each hidden block is written once before any other term reaches it, so "
     "`=` and `+=` agree", [_LS + "x__negated_blocks__mutmut_47", _LS + "x__negated_blocks__mutmut_56"]),
    ("sound-tuning", "the test that rejects a clearly indefinite P (second instead of smallest eigenvalue) "
     "only skips candidates: the bound rho + mu (1 + K^2) holds for every candidate it keeps",
     [_LS + "x__certify_singular__mutmut_36", _LS + "x__certify_singular__mutmut_40"]),
    ("sound-margin", "the positivity test with `<`: a D block whose smallest computed eigenvalue equals "
     "the eigen-solver's error bound 100 n EPS64 ||D|| has an exact smallest eigenvalue >= 0, and the proof "
     "needs D >= 0 only (a singular D_(b-1) makes the next Cholesky fail, which refuses)",
     [_LS + "x__verify_blocks__mutmut_130"]),
    ("conservative", "the residual test with `<` instead of `<=`: stricter",
     [_LS + "x__verify_blocks__mutmut_141"]),
    ("conservative", "a larger positivity threshold (101 instead of 100)",
     [_LS + "x__verify_blocks__mutmut_134"]),
]

#: survivors of a recorded run that a test added after that run kills (checked by hand on the mutated code;
#: the next `make mutate SHARD=...` records them as killed)
_TRIAGE += [
    ("killed-after-run", "a float32 box not cast to float64 makes tanh / sigmoid / ELU run in float32, off "
     "by ~1e-8, outside the float64 widening: killed by tests/test_interval_mutants.py::test_float32_boxes_"
     "through_library_activations_are_evaluated_in_float64 (added after the interval_rules run)",
     [_IB + "x_interval_forward__mutmut_10", _IB + "x_interval_forward__mutmut_11"]),
]

_TRIAGE += [
    ("conservative", "the input domain is dropped (not checked, not clipped): the interval test covers the "
     "whole ball, a looser but sound test", [_CI + "x_interval_certified__mutmut_39",
                                             _CI + "x_interval_certified_accuracy__mutmut_17",
                                             _CI + "x_interval_certified_accuracy__mutmut_51",
                                             _CI + "x__union_with_margin__mutmut_37",
                                             _CI + "x__interval_test__mutmut_12"]),
    ("conservative", "inputs are skipped by the interval test (exactly one left, or a loop from 1): they "
     "stay uncertified", [_CI + "x__union_with_margin__mutmut_9", _CI + "x__union_with_margin__mutmut_24"]),
    ("killed-after-run", "keeps intersecting after a hybrid head, around a float64 reference whose round-off "
     "is not bounded: killed by tests/test_interval_mutants.py::test_interval_bounds_of_a_cancelling_linear_"
     "layer_contain_the_exact_logits once its products round (float64 weights, fixed after the "
     "interval_certify run)", [_CI + "x__propagate__mutmut_48"]),
]

_TRIAGE += [
    ("killed-after-run", "refusing an input equal to the domain's upper end (a pixel of 1.0) is an error, "
     "not a bound; killed by tests/test_interval_mutants.py::test_interval_radius_and_domain_are_checked_by_"
     "name "
     "(the boundary case added after the interval_certify run)", [_CI + "x__check_domain__mutmut_10"]),
]

_TRIAGE += [
]

_TRIAGE += [
    ("equivalent", "c is only used for neurons with a fixed slope (alpha == beta), so alpha or beta agree",
     [_LS + "x__structure__mutmut_41"]),
    ("equivalent", "n = 0 (every slope fixed): concatenating the empty per-layer arrays gives the same empty "
     "array, and lipsdp refuses such a network right after _structure; zip's strict flag: equal lengths by "
     "construction; the slopes are never empty, so max's initial value is unused",
     [_LS + f"x__structure__mutmut_{i}" for i in (80, 84, 87, 88, 89, 90, 93, 97, 100, 101, 102, 103, 106,
                                                  113, 114, 115, 116, 117, 132)]),
    ("equivalent", "K^2 + 1e-300 or - 1e-300: lost in the float64 sum with any K^2 > 1e-284",
     [_LS + "x__structure__mutmut_140"]),
    ("conservative", "a larger K^2 (the gain's max slope at least 1, a larger inflation or offset)",
     [_LS + f"x__structure__mutmut_{i}" for i in (135, 146, 147)]),
    ("killed-after-run", "the magnitude companion with the output scale multiplied instead of divided, c1 "
     "with a / b, and every smaller K^2 (fewer layers, one layer's gain, K^2 set not summed, a deflation): "
     "killed "
     "by tests/test_estimate_mutants.py::test_lmi_matrices_equal_the_exact_ones_and_bound_their_magnitude "
     "(scale 2, slopes [1, 3]) and ::test_structure_k2_is_the_documented_sum_of_layer_gains (added after the "
     "lipsdp_cert run)", [_LS + f"x__structure__mutmut_{i}" for i in (72, 119, 122, 124, 126, 136, 141, 142,
                                                                       145)] + [_LS + "x__lmi__mutmut_12"]),
]

_TRIAGE += [
    ("report-only", "the search's info dict: the root value under another key, or the 'closed' flag's gap "
     "test (reported as details['gap_closed']); the returned upper bound is unchanged",
     [_LO + f"x_branch_and_bound_max__mutmut_{i}" for i in (193, 194, 201, 203)]),
]

_MP = "lipkit.estimation._mlp."

_TRIAGE += [
    ("conservative", "a larger final rounding (5 operations)", [_LC + "x_affine_local_upper__mutmut_64"]),
    ("equivalent", "ones is all ones, so dividing by it is multiplying by it",
     [_LC + "x_activation_slope_range__mutmut_200"]),
    ("conservative", "ELU with alpha = 0 is refused (the estimators then fall back to the naive bound)",
     [_MP + "x_activation_slopes__mutmut_19"]),
    ("report-only", "the text of the unsupported-module error (the error is still raised)",
     [_MP + f"x_activation_slopes__mutmut_{i}" for i in (30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41)]),
    ("conservative", "a default method name that does not exist: estimate(model) without a method raises "
     "instead of returning a bound", [_ES + "x_estimate__mutmut_2"]),
]

_TRIAGE += [
    ("killed-after-run", "a negative absolute widening inverts the slope range of a saturated tanh / sigmoid "
     "neuron (derivative 0 in float64, e^-1600 in fact): killed by the [800, 900] interval of tests/"
     "test_estimate_mutants.py::test_smooth_slope_ranges_contain_the_exact_derivative_range (added after "
     "the estimate_upper run)", [_LC + "x_activation_slope_range__mutmut_228"]),
]

_TRIAGE += [
    ("equivalent", "the LMI matrix and its magnitude companion are square (N x N), so shape[1] is N",
     [_LS + "x__eig_margin__mutmut_5"]),
    ("conservative", "the eigenvalue check with `<` instead of `<=`: stricter",
     [_LS + "x__proves_nsd__mutmut_5"]),
]

_MN = "lipkit.monotonic.network."
_MC = _MN + "x\u01c1MonotonicNetwork\u01c1"

_TRIAGE += [
    ("equivalent", "zip's strict flag: the lengths are compared just before, so the pairs are the same",
     [_MC + f"_cache_holds__mutmut_{i}" for i in (19, 22, 23)]),
    ("equivalent", "the eval-mode guard of the cache: the cache is keyed on a snapshot of every tensor, so "
     "it returns the value of the current weights in any mode (the guard only saves the snapshot's cost "
     "in training)", [_MC + "body_bound__mutmut_1"]),
    ("equivalent", "deployed_slope(None): the non-float path makes a tensor holding the float32 lam "
     "(exactly representable in float32 and float64), the same value as deployed_slope(torch.float32)",
     [_MC + "verify_slope__mutmut_11", _MC + "lipkit_skip_form__mutmut_4", _MC + "forward__mutmut_23",
      _MN + "x__monotonic_rule__mutmut_16"]),
    ("equivalent", "`.to(None)` / `device=None`: a no-op on one device (the CPU here); on a mismatch of "
     "devices the product raises, it never computes another value",
     [_MC + "lipkit_skip_form__mutmut_3", _MC + "forward__mutmut_22", _MC + "forward__mutmut_26",
      _MC + "forward__mutmut_28"]),
    ("equivalent", "`c.to(dtype=None)`: the constraints are a buffer that follows the module's dtype, as the "
     "body's weights do, so they already have the input's dtype (a mismatch raises in the body first)",
     [_MC + "forward__mutmut_27", _MC + "forward__mutmut_29"]),
    ("equivalent", "q = None means q = p downstream (lipschitz_bound and operator_norm read None as p)",
     [_MN + "x__monotonic_rule__mutmut_2"]),
    ("conservative", "the body's bound without the recorded shapes: its rules record them again or bound "
     "for every input size, never below the shape-specific bound", [_MN + "x__monotonic_rule__mutmut_8"]),
    ("conservative", "verify_slope with `>`: refuses lam equal to the bound, stricter",
     [_MC + "verify_slope__mutmut_13"]),
    ("conservative", "a larger round_up count (3 operations)",
     [_MN + "x__monotonic_rule__mutmut_31", _MN + "x_slope_for__mutmut_9"]),
    ("sound-margin", "round_up with its default count 1 instead of 2: one float64 operation is rounded "
     "(the sum lg + la; the product bound (1 + 2^-10), 1 + 2^-10 being exact) and round_up(., 1) inflates "
     "by 8 u plus one step", [_MN + "x__monotonic_rule__mutmut_29", _MN + "x_slope_for__mutmut_5"]),
]

_SB = "lipkit.bounds.sensitivity."
_NLS = "lipkit.nn.linear.x__lip_linear_sensitivity__mutmut_"
_NCS = "lipkit.nn.conv.x__lip_conv_sensitivity__mutmut_"
_NSP = "lipkit.nn.spline."
_LSS = "lipkit.losses.x\u01c1"

_TRIAGE += [
    ("report-only", "the text of an error message (the error is still raised)",
     [_SB + f"x__conv_sensitivity__mutmut_{i}" for i in (5, 6, 7, 62, 63, 64)]
     + [_NLS + str(i) for i in (8, 9, 10, 11, 12)] + [_NCS + str(i) for i in (8, 9, 10, 11, 12)]
     + [_NSP + f"x__spline_sensitivity__mutmut_{i}" for i in (5, 7, 8, 9, 10, 11)]
     + [_LSS + f"LogitMSELoss\u01c1logit_lipschitz__mutmut_{i}" for i in (9, 10)]),
    ("conservative", "the input size dropped from the window count: max_window_cover without the size "
     "counts for every input size, never fewer windows", [_SB + f"x__conv_sensitivity__mutmut_{i}"
                                                          for i in (15, 40, 46)]),
    ("equivalent", "the probe that reads the output size: zeros of the default dtype / device or a batch "
     "of 2 give the same spatial output size (a dtype mismatch raises, never a wrong size)",
     [_SB + f"x__conv_sensitivity__mutmut_{i}" for i in (25, 26, 28, 29, 30)]),
    ("conservative", "a larger round_up count", [_SB + "x__conv_sensitivity__mutmut_58",
                                                 _SB + "x__conv_sensitivity__mutmut_76",
                                                 _NSP + "x__spline_sensitivity__mutmut_36",
                                                 _NSP + "x__spline_sensitivity__mutmut_49",
                                                 _LSS + "HKRLoss\u01c1logit_lipschitz__mutmut_50",
                                                 _LSS + "HKRLoss\u01c1logit_lipschitz__mutmut_51",
                                                 _LSS + "LipschitzCrossEntropyLoss\u01c1"
                                                        "logit_lipschitz__mutmut_6",
                                                 _LSS + "LogitMSELoss\u01c1logit_lipschitz__mutmut_18"]),
    ("sound-margin", "round_up with its default count 1: it inflates by 8 u (u = 2^-53) plus one step, "
     "above the relative error of the expression's own roundings (sqrt(m) r g and sqrt(P) g: 3 and 2; "
     "sqrt(N) g max|b|: 3; the coefficient bound's 6 operations; sqrt(2) t: 1, with the float sqrt(2) "
     "above the exact one; R + target: 1)",
     [_SB + "x__conv_sensitivity__mutmut_54", _SB + "x__conv_sensitivity__mutmut_73",
      _NSP + "x__spline_sensitivity__mutmut_27", _NSP + "x__spline_sensitivity__mutmut_45",
      _LSS + "LipschitzCrossEntropyLoss\u01c1logit_lipschitz__mutmut_4",
      _LSS + "LogitMSELoss\u01c1logit_lipschitz__mutmut_15"]),
    ("sound-margin", "HKR's round_up count 4 C - 8 or 4 / C + 8 instead of 4 C + 8: still at least 8 "
     "operations (8 (4 C - 8) u >= 64 u for C >= 4; 0 -> 1 for C = 2, where the evaluation has ~5 "
     "roundings), above the float64 evaluation's ~(C + 9) / 2 u relative error for the class counts where "
     "each applies", [_LSS + "HKRLoss\u01c1logit_lipschitz__mutmut_48",
                      _LSS + "HKRLoss\u01c1logit_lipschitz__mutmut_49"]),
    ("equivalent", "is_parametrized(module, None) asks for any parametrisation: a LipLinear / LipConv2d "
     "parametrises only its weight", [_NLS + "2", _NLS + "4", _NCS + "2", _NCS + "4"]),
    ("equivalent", "n_pos with `/`: the product of the shape divided by batch x channels is an exact "
     "integer-valued float", [_NSP + "x__spline_sensitivity__mutmut_14"]),
    ("equivalent", "the coefficients are cast to float64 inside the slope map anyway; the Jacobian of the "
     "cast is the identity", [_NSP + "x_constraint_jacobian_norms__mutmut_2"]),
    ("equivalent", "matrix_norm's default order is the Frobenius norm",
     [_NSP + "x_constraint_jacobian_norms__mutmut_17"]),
    ("conservative", "a larger Frobenius allowance (2x, or 2 + 1e-12): min() can only grow",
     [_NSP + "x_constraint_jacobian_norms__mutmut_30", _NSP + "x_constraint_jacobian_norms__mutmut_31"]),
    ("killed-after-run", "the Frobenius branch inflated down (/ (1 + 1e-12), * (1 - 1e-12)): killed by tests/"
     "test_dp_mutants.py::test_constraint_jacobian_norm_of_a_rank_one_projection_is_not_below_one (a "
     "Jacobian 1 1^T / K, where the Frobenius branch is taken; added after the dp_rules run, checked by "
     "hand)", [_NSP + "x_constraint_jacobian_norms__mutmut_28",
               _NSP + "x_constraint_jacobian_norms__mutmut_29"]),
    ("killed-after-run", "the output size not passed to the window count (symmetric padding assumed): "
     "killed by the asymmetric 'same' padding cases on inputs smaller than the kernel in tests/"
     "test_dp_mutants.py::test_conv_rule_is_sqrt_cover_r_g (added after the dp_rules run, checked by hand)",
     [_SB + "x__conv_sensitivity__mutmut_41", _SB + "x__conv_sensitivity__mutmut_47"]),
    ("killed-after-run", "HKR's round_up count 1: killed by tests/test_dp_mutants.py::test_hkr_constant_"
     "carries_its_documented_rounding_allowance (30 classes; added after the dp_rules run, checked by hand)",
     [_LSS + "HKRLoss\u01c1logit_lipschitz__mutmut_46"]),
    ("equivalent", "the KR coefficients with dtype None / device None: float64 on the CPU either way",
     [_LSS + "HKRLoss\u01c1logit_lipschitz__mutmut_3", _LSS + "HKRLoss\u01c1logit_lipschitz__mutmut_4"]),
    ("conservative", "the smallest off-label coefficient over all labels instead of per label: a larger "
     "worst case", [_LSS + "HKRLoss\u01c1logit_lipschitz__mutmut_17"]),
    ("conservative", "an output radius 0 (or below 1) refused: an error instead of a constant",
     [_LSS + "LogitMSELoss\u01c1logit_lipschitz__mutmut_6",
      _LSS + "LogitMSELoss\u01c1logit_lipschitz__mutmut_7"]),
]

_FB = "lipkit.monotonic.fastbound."

_TRIAGE += [
    ("equivalent", "the fast l_1 -> l_inf path falls back to lipschitz_bound(body, 1, inf) itself, the same "
     "value (the fast path is an optimisation, bit-identical when it runs): never taken (value None, "
     "_fast(None)), a zero-cost child refused, an unreachable norm ending the search, or shapes=None (a "
     "rule that reads the shapes raises AttributeError, which falls back; the others ignore them)",
     [_FB + f"x__fast__mutmut_{i}" for i in (14, 21, 27, 36)]
     + [_FB + f"x_body_bound_1_inf__mutmut_{i}" for i in (1, 2)]),
]

_RF = _RO + "x_forward_error_bound__mutmut_"
_CC = _MG + "x_compute_certificates__mutmut_"

_TRIAGE += [
    ("equivalent", "every torch tensor has `_backward_hooks` and `_post_accumulate_grad_hooks` attributes "
     "(None when unset), so getattr without a default reads the same value",
     [_R + "x_module_problem__mutmut_50", _R + "x_module_problem__mutmut_57"]),
    ("equivalent", "the shape-recording pass on 2 rows instead of 1: the same per-example shapes",
     [_RF + "18"]),
    ("conservative", "the layers' input sizes not passed to the suffix bounds (None, or a shape without the "
     "channels, which makes the recording forward raise): size-free bounds, never smaller, or an error",
     [_RF + "24", _RF + "26", _RF + "47", _RF + "50", _CC + "152"]),
    ("equivalent", "one more prefix bound (the whole chain again) is computed and never read",
     [_RF + "35"]),
    ("equivalent", "the running total without the float64 dtype: every term added is a float64 tensor "
     "(errors computed from the float64 twin's activations), so `total + suffix * e` promotes to float64; "
     "device None is the CPU here (a mismatch raises)", [_RF + "58", _RF + "59", _RF + "61", _RF + "62"]),
    ("equivalent", "device None / `.to(None)`: a no-op on one device (the CPU here); a mismatch raises",
     [_CC + "97", _CC + "101", _CC + "120"]),
    ("equivalent", "float32 minus float64 promotes to float64 exactly: the same observed error",
     [_CC + "167"]),
    ("conservative", "the binary certificates without the per-example input shape: size-free bounds",
     [_CC + "41"]),
    ("killed-after-run", "the spline branch of the a-priori round-off bound skipped: killed by tests/"
     "test_spline.py::test_round_off_bound_of_a_spline_alone_is_its_spline_term (added after the roundoff "
     "run, checked by hand)", [_RF + "100", _RF + "101"]),
    ("killed-after-run", "the deployed model not passed to the a-priori bound of a multi-output monotone "
     "wrapper (its skip form is then not analysed): killed by tests/test_monotonic_certify.py::test_multi_"
     "output_exported_wrapper_gets_the_a_priori_roundoff_bound (added after the roundoff run, checked by "
     "hand; it also kills the logits not passed, which that analysis reads)", [_CC + "147", _CC + "153"]),
]

_DS = "lipkit.dp.sensitivity."

# dp_sensitivity: a first part of the triage (the rest is listed with reason null, to triage next)
_TRIAGE += [
    ("conservative", "a larger rounding factor, allowance or round_up count",
     [_DS + f"x_gram_bound__mutmut_{i}" for i in (20, 22, 40, 41, 42)]
     + [_DS + f"x_gram_bound_fp32__mutmut_{i}" for i in (73, 74, 75)]
     + [_DS + "x__norm_up__mutmut_10"]),
    ("sound-tuning", "a free parameter of a proven bound: the block width of the float32 Gram products (the "
     "allowance is derived for any width and uses the width it runs with), the number of power iterations "
     "of the Collatz-Wielandt vector (any positive vector gives a valid bound)",
     [_DS + "x_gram_bound_fp32__mutmut_1", _DS + "x_conv_gram_bound__mutmut_2"]),
    ("equivalent", "unreachable from lipkit's callers: the Gram bounds receive the 2-D weights of dense "
     "layers, so the reshape of other shapes never runs",
     [_DS + f"x__wide__mutmut_{i}" for i in range(3, 11)]),
    ("equivalent", "a square matrix transposed: A A^T and A^T A have the same largest eigenvalue",
     [_DS + "x__wide__mutmut_14"]),
    ("equivalent", "device None: the CPU here (a mismatch raises)",
     [_DS + "x_gram_bound_fp32__mutmut_16", _DS + "x_gram_bound_fp32__mutmut_19"]),
    ("report-only", "_norm_up(None) raises where the forward on zeros failed: the model is still refused, "
     "with an AttributeError instead of the listed problem",
     [_DS + "x\u01c1_Walker\u01c1walk_chain__mutmut_21", _DS + "x\u01c1_Walker\u01c1walk_chain__mutmut_71"]),
]

_DW = _DS + "x\u01c1_Walker\u01c1"
_NS = _DS + "x_network_sensitivity__mutmut_"
_FL = _DS + "x_fast_lipschitz__mutmut_"

_TRIAGE += [
    ("report-only", "the path, module or text of a recorded problem, or the call that records it (a dropped "
     "argument raises a TypeError, a second 'not covered' line is added): the model is refused either way",
     [_DW + f"walk__mutmut_{i}" for i in (11, 26, 40, 82, 83, 84, 85, 86, 87, 91, 92, 93, 94, 95, 96, 97,
                                           98, 108, 109)]
     + [_DW + f"walk_chain__mutmut_{i}" for i in (6, 7, 8, 9, 10, 11, 12, 53, 62, 63, 64, 65, 66, 67, 68,
                                                 128)]
     + [_DW + f"record__mutmut_{i}" for i in (10, 11)]
     + [_NS + str(i) for i in (13, 62, 70, 71, 77, 85, 86, 91, 109, 110, 112)]),
    ("equivalent", "every tensor recorded is a parameter of the model, so it has a name: the default is "
     "never used", [_DW + f"record__mutmut_{i}" for i in (3, 5, 7)]),
    ("equivalent", "sub.parameters(recurse=None) is recurse=False (falsy)", [_DW + "walk__mutmut_107"]),
    ("equivalent", "grads is overwritten entry by entry before it is read", [_DW + "walk_chain__mutmut_96"]),
    ("equivalent", "the shapes are recorded again instead of reusing the caller's (the same shapes)",
     [_NS + "16"]),
    ("equivalent", "the loss constant is always computed (the top-level chain calls g_of), so loss_g is "
     "never empty", [_NS + "127"]),
    ("conservative", "a Sequential subclass at the top is walked as a chain of one: one more level of "
     "allowances, never smaller bounds", [_NS + str(i) for i in (52, 55, 56)]),
    ("conservative", "a larger round_up count",
     [_DW + "walk__mutmut_68", _DW + "walk_chain__mutmut_33", _DW + "walk_chain__mutmut_83",
      _DW + "walk_chain__mutmut_118", _NS + "105", _FL + "84", _FL + "96", _FL + "112", _FL + "117"]),
    ("sound-margin", "a smaller round_up count inside the composition: the float64 bookkeeping's rounding "
     "(at most a few 1e-16 relative per product) stays far inside the relative allowance 1e-3 that every "
     "radius and gradient bound is multiplied by (the composition is an allowance, as its docstring says, "
     "not a proof about float arithmetic)",
     [_DW + "walk__mutmut_63", _DW + "walk_chain__mutmut_31", _DW + "walk_chain__mutmut_81",
      _DW + "walk_chain__mutmut_114", _DW + "walk_chain__mutmut_117", _NS + "100", _NS + "104",
      _DS + "x__norm_up__mutmut_6", _DS + "x__norm_up__mutmut_9"]),
    ("equivalent", "the branch for Residual / ConvexResidual / a nested Sequential skipped: lipschitz_bound "
     "gives the same composition through the registered rule, only slower",
     [_FL + str(i) for i in (65, 67, 70, 71, 85, 97)]),
    ("equivalent", "the recursion helper: a memoised bound of the child (the walker's) or fast_lipschitz "
     "itself give the same values", [_FL + str(i) for i in (2, 3, 4, 11, 13)]),
    ("sound-tuning", "the 2% threshold that chooses between the fast Gram bound and the registry's: each is "
     "a sound bound of the same weight", [_FL + str(i) for i in (29, 30, 31, 55, 56, 57)]),
]

_GB = _DS + "x_gram_bound__mutmut_"
_GF = _DS + "x_gram_bound_fp32__mutmut_"
_CG = _DS + "x_conv_gram_bound__mutmut_"

_TRIAGE += [
    ("equivalent", "unreachable from lipkit's callers: the walker always passes its memoised bound as "
     "`child`, so the default recursion is never built", [_FL + str(i) for i in (5, 6, 7, 8, 9)]),
    ("equivalent", "lipschitz_bound's default p is 2", [_FL + str(i) for i in (36, 62, 122)]),
    ("conservative", "the registry bound without the recorded shapes: recorded again or size-free, never "
     "smaller", [_FL + "34", _FL + "37"]),
    ("conservative", "a grouped LipConv2d bounded as one dense convolution of its per-group input channels "
     "(all output channels stacked): at least the largest group's norm, the grouped operator's norm",
     [_FL + "54"]),
    ("sound-tuning", "the fast Gram bound also tried on a parametrised layer: it bounds `module.weight`, the "
     "weight that layer's forward uses, and is only chosen when within 2% of `lip` (else the registry)",
     [_FL + "20", _FL + "46"]),
    ("sound-margin", "a smaller round_up count in the composition of bounds (products and 1 + L, c1 + c2 L): "
     "one or two float64 roundings, inside the composition's relative allowance 1e-3",
     [_FL + "82", _FL + "83", _FL + "92", _FL + "108"]),
    ("equivalent", "ConvexResidual with a = 0: c1 = 1 exactly, so round_up(1) and round_up(c1) with any "
     "count give the same value", [_FL + "115", _FL + "116"]),
    ("conservative", "ConvexResidual with a = 0 raises instead of returning its bound",
     [_FL + "113", _FL + "114"]),
    ("sound-margin", "the Gram bound's round_up counts: its gamma_k term is 8 (k + 2) u ||a_i|| sum_j "
     "||a_j||, at least 8 (k + 2) u times the row sum (|G_ij| <= ||a_i|| ||a_j||), and k >= m in the wide "
     "orientation, so after the k u of the dot products it still covers the row sum's m - 1 "
     "additions and the "
     "square root; the float32 variant's 2 gamma_kb (~7.6e-6 of the row) covers its float64 sums many times",
     [_GB + str(i) for i in (32, 37, 38, 39)] + [_GF + str(i) for i in (31, 32, 33, 64, 69, 70, 71, 72)]),
    ("sound-margin", "gamma_kb = kb u / (1 + kb u) or kb u (1 - kb u) instead of kb u / (1 - kb u): a change "
     "of order (kb u)^2 = 1.5e-11 relative, inside the factor 2 on gamma (a whole gamma of slack); the row "
     "norms in float32 (relative error <= k 2^-24) only scale that allowance by (1 +- 2.4e-4)",
     [_GF + "42", _GF + "44", _GF + "39"]),
    ("sound-tuning", "the positive shift of the Collatz-Wielandt vector (1e-12 / max, or 1.000000000001 "
     "max): any positive vector gives a valid bound max_i (A v)_i / v_i", [_CG + "33", _CG + "34"]),
    ("conservative", "an all-zero kernel bounded by 1 instead of 0", [_CG + "29"]),
    ("conservative", "a larger round_up count", [_CG + "51", _CG + "52"]),
    ("conservative", "a larger allowance on the correlation or on the sum over the offsets",
     [_DS + f"x__schur_matrix__mutmut_{i}" for i in (35, 39, 51, 55)]),
    ("equivalent", "ConvexResidual with a = 0 through the general branch: c1 + 0 * L = c1 = 1",
     [_FL + "104"]),
]

_DR = "lipkit.dp.retraction."

# dp_retraction: the certified projection step (issue 18), its rounding analysis split into functions that
# tests/test_dp_retraction_mutants.py checks against the documented formulas in exact rationals
_TRIAGE += [
    ("equivalent", "zero padding of the last block also when the blocks divide k (an empty block of zeros "
     "then): the same matrix", [_DR + "x__blocked_gram__mutmut_7"]),
    ("sound-tuning", "the size from which the Gram matrix is formed as two diagonal blocks and one "
     "off-diagonal block: either way every entry is one blocked float32 dot product with the same gamma_n",
     [_DR + "x__blocked_gram__mutmut_24", _DR + "x__blocked_gram__mutmut_25"]),
    ("equivalent", "the split of the rows at a third instead of a half: the three blocks still tile the "
     "symmetric matrix", [_DR + "x__blocked_gram__mutmut_41"]),
    ("equivalent", "torch.cat's default dim is 0", [_DR + "x__blocked_gram__mutmut_85"]),
    ("sound-tuning", "the default block width: the analysis uses the gamma_n of the width it runs with",
     [_DR + "x_certified_newton_schulz__mutmut_1"]),
    ("sound-tuning", "a square matrix stepped in its transposed orientation: X^T - (X^T X - I) X^T / 2 is "
     "the transpose of X - (X X^T - I) X / 2, and the analysis (Gershgorin, the float32 products) holds for "
     "either", [_DR + "x_certified_newton_schulz__mutmut_13"]),
    ("conservative", "a larger round_up count", [_DR + "x_certified_newton_schulz__mutmut_90",
                                                 _DR + "x__row_sum_bound__mutmut_10",
                                                 _DR + "x__gram_error__mutmut_14",
                                                 _DR + "x__step_error__mutmut_10",
                                                 _DR + "x__step_error__mutmut_35"]),
    ("sound-margin", "sigma(X)'s own round_up count (one addition, one square root: <= 1.5 u relative on "
     "sigma) is also covered by round_up(err, 8), which inflates by 64 u where err's evaluation chain is "
     "at most 7 operations", [_DR + "x__step_error__mutmut_6"]),
    ("equivalent", "a weight of another shape or dtype reaches torch.equal, which is False for different "
     "shapes and compares the values across dtypes (equal values have the same norm, so the certified bound "
     "still holds); a weight on another device (only with a GPU) would make torch.equal raise instead of "
     "returning None", [_DR + "x_certified_norm__mutmut_6", _DR + "x_certified_norm__mutmut_7"]),
]

_NU = "lipkit.bounds.numerics.x_fp32_products_are_ieee__mutmut_"

_TRIAGE += [
    ("conservative", "the interval test skipped whenever some input is left (mutmut flags it 'suspicious': "
     "slower than its baseline): only the margin certificates, a subset (with none left, the interval test "
     "runs on an empty selection instead)", ["lipkit.certify.interval.x__union_with_margin__mutmut_8"]),
]

_TRIAGE += [
    ("equivalent", "getattr without a default: torch 2.13 (pinned) has torch.backends.mkldnn / .cuda, their "
     "matmul and every fp32_precision, so the default is never used (a torch without them would raise "
     "AttributeError instead of reading None)", [_NU + str(i) for i in (12, 19, 26, 33, 40)]),
]

#: mutant numbers of certify_multipliers, _certify_singular and _certify_blocks before the behaviour-
#: preserving extraction of _eig_margin / _proves_nsd / _singular_mu (the triage above uses them) -> after
#: it (matched by their diff, which is unchanged); the margin mutants of those lines moved into the helpers
#: and are killed there
_RENUMBERED: dict[str, str] = {_LS + f"{f}__mutmut_{a}": _LS + f"{f}__mutmut_{b}" for f, pairs in {
    "x_certify_multipliers": {
        17: 15, 18: 16, 20: 18, 22: 20, 24: 22, 25: 23, 26: 24, 27: 25, 28: 26, 31: 29, 32: 30, 33: 31, 34:
        32, 35: 33, 36: 34, 37: 35, 38: 36, 39: 37, 40: 38, 41: 39, 43: 41, 44: 42, 47: 45, 52: 50, 53: 51,
        54: 52, 55: 53, 56: 54, 57: 55, 58: 56, 59: 57, 60: 58, 63: 61, 64: 62, 80: 78, 81: 79, 87: 85, 90:
        88, 111: 109, 112: 110, 113: 111, 114: 112, 116: 114},
    "x__certify_singular": {
        9: 7, 21: 19, 31: 29, 33: 31, 34: 32, 36: 34, 37: 35, 38: 36, 41: 39, 43: 41, 44: 42, 45: 43, 48:
        46, 49: 47, 58: 56, 59: 57, 60: 58, 61: 59, 62: 60, 63: 61, 64: 62, 65: 63, 67: 65, 68: 66, 69: 67,
        70: 68, 71: 69, 72: 70},
    "x__certify_blocks": {
        44: 40},
}.items() for a, b in pairs.items()}

#: compute_certificates after the line that defaults ``input_shape`` to the batch's (2026-12-05): every
#: later mutant's number moved by 6 (matched by their diff, which is unchanged)
_RENUMBERED.update({_CC + str(a): _CC + str(a + 6) for a in (41, 97, 101, 120, 152, 167)})
#: lipschitz_bound after the check that reports an unsupported module before a rejected input_shape
_RENUMBERED[_R + "x_lipschitz_bound__mutmut_56"] = _R + "x_lipschitz_bound__mutmut_62"

_TRIAGE += [
    ("equivalent", "input_shape always taken from x: after validate_x, a given input_shape equals "
     "x.shape[1:]", [_CC + "17"]),
    ("report-only", "the check that reports an unsupported module before a rejected input_shape bounds "
     "another norm pair: the call is refused either way, with one error or the other",
     [_R + f"x_lipschitz_bound__mutmut_{i}" for i in (27, 29, 30)]),
]

#: mutants triaged above that a later run no longer reports as survivors: killed by tests added since (most
#: of them former ``sound-margin`` / ``killed-after-run`` entries, now pinned by
#: tests/test_pinned_allowances_* and the *_mutants.py files), or renumbered by an edit of their function.
#: They stay in the triage's history above but are not reasons any more; a retired mutant that survives
#: again fails tests/test_mutation_report.py (`python bench/mutation.py --retriage` lists new stale ones).
_RETIRED: dict[str, tuple[int, ...]] = {
    "lipkit.bounds.conv.x__conv_mixed_norm__mutmut_": (21, 52),
    "lipkit.bounds.conv.x_conv_operator_norm__mutmut_": (14, 128, 133, 164, 305, 312, 323),
    "lipkit.bounds.interval.x__centre_radius__mutmut_": (5,),
    "lipkit.bounds.interval.x__elu__mutmut_": (20,),
    "lipkit.bounds.interval.x_interval_forward__mutmut_": (10, 11),
    "lipkit.bounds.interval.x_monotone_rounded__mutmut_": (1, 13, 14),
    "lipkit.bounds.numerics.x_operator_norm__mutmut_": (37,),
    "lipkit.bounds.numerics.x_round_up__mutmut_": (7,),
    "lipkit.bounds.registry.x_module_problem__mutmut_": (22, 23, 69, 76),
    "lipkit.bounds.sensitivity.x__conv_sensitivity__mutmut_": (15, 40, 41, 46, 47, 54, 73),
    "lipkit.certify.interval.x__check_domain__mutmut_": (10,),
    "lipkit.certify.interval.x__propagate__mutmut_": (20, 23, 26, 27, 38, 39, 40, 41, 48, 74, 75, 89, 90,
                                                      91, 92, 101, 103),
    "lipkit.certify.margin.x_compute_certificates__mutmut_": (83, 87, 106, 147, 153, 154),
    "lipkit.certify.roundoff.x_forward_error_bound__mutmut_": (22, 40, 41, 43, 44, 100, 101),
    "lipkit.dp.sensitivity.x__norm_up__mutmut_": (6, 9),
    "lipkit.dp.sensitivity.x_fast_lipschitz__mutmut_": (2, 4, 65, 82, 83, 85, 92, 97, 108),
    "lipkit.dp.sensitivity.x_gram_bound__mutmut_": (32, 37, 38, 39),
    "lipkit.dp.sensitivity.x_gram_bound_fp32__mutmut_": (1, 31, 32, 33, 42, 44, 64, 69, 70, 71, 72),
    "lipkit.dp.sensitivity.x_network_sensitivity__mutmut_": (100, 104),
    "lipkit.dp.sensitivity.x\u01c1_Walker\u01c1walk__mutmut_": (63,),
    "lipkit.dp.sensitivity.x\u01c1_Walker\u01c1walk_chain__mutmut_": (31, 81, 114, 117),
    "lipkit.estimation.lipopt.x__certify__mutmut_": (9, 10, 37),
    "lipkit.estimation.lipopt.x_branch_and_bound_max__mutmut_": (23, 31, 33, 87, 97, 99, 101, 144, 165, 166,
                                                                 168, 169),
    "lipkit.estimation.lipsdp.x__certify_blocks__mutmut_": (39, 41, 42, 45, 46, 47, 48, 49),
    "lipkit.estimation.lipsdp.x__certify_singular__mutmut_": (40, 82, 106),
    "lipkit.estimation.lipsdp.x__coupling_error__mutmut_": (4, 10),
    "lipkit.estimation.lipsdp.x__diagonal_error__mutmut_": (4, 13),
    "lipkit.estimation.lipsdp.x__lmi__mutmut_": (12,),
    "lipkit.estimation.lipsdp.x__residual_norm_bound__mutmut_": (17, 20),
    "lipkit.estimation.lipsdp.x__structure__mutmut_": (72, 119, 122, 124, 126, 136, 141, 142, 145, 147),
    "lipkit.estimation.lipsdp.x__verify_blocks__mutmut_": (16, 19, 130, 134),
    "lipkit.estimation.local.x_activation_slope_range__mutmut_": (228,),
    "lipkit.estimation.local.x_affine_local_upper__mutmut_": (7, 33, 37, 40, 42, 57),
    "lipkit.estimation.x_local_upper__mutmut_": (29, 30),
    "lipkit.losses.x\u01c1HKRLoss\u01c1logit_lipschitz__mutmut_": (46, 48, 49, 50),
    "lipkit.losses.x\u01c1LipschitzCrossEntropyLoss\u01c1logit_lipschitz__mutmut_": (4,),
    "lipkit.losses.x\u01c1LogitMSELoss\u01c1logit_lipschitz__mutmut_": (7, 15),
    "lipkit.monotonic.network.x__monotonic_rule__mutmut_": (29,),
    "lipkit.monotonic.network.x_slope_for__mutmut_": (5,),
    "lipkit.nn.intervals.x__softplus__mutmut_": (10,),
    "lipkit.nn.spline.x__spline_sensitivity__mutmut_": (27, 45),
    "lipkit.nn.spline.x_constraint_jacobian_norms__mutmut_": (28, 29),
}

RETIRED: set[str] = {prefix + str(i) for prefix, numbers in _RETIRED.items() for i in numbers}

#: mutant name -> (kind, reason)
SURVIVORS: dict[str, tuple[str, str]] = {_RENUMBERED.get(m, m): (kind, why) for kind, why, ms in _TRIAGE
                                          for m in ms if _RENUMBERED.get(m, m) not in RETIRED}

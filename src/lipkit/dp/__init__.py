"""Differentially private training without clipping (Bethune et al., "DP-SGD without clipping: the Lipschitz
neural network way", ICLR 2024).

Owns the DP pillar, one concept per module:

* :mod:`.sensitivity`: per-example gradient-norm bounds of every trainable tensor, composed from the
  layers' sensitivity facet and :func:`lipkit.lipschitz_bound` of prefixes and suffixes;
* :mod:`.losses`: which losses are allowed, their Lipschitz constant w.r.t. the logits, the private
  reduction (per-example sum over the expected batch size);
* :mod:`.projection`: the input projection onto an l2 ball and the constraint maps applied after each step;
* :mod:`.retraction`: the orthogonal constraint's projection step with a certified bound of what it writes;
* :mod:`.sampling`: Poisson sampling (and shuffled batches without amplification), physical chunks;
* :mod:`.accounting`: opacus' RDP / PRV accountants (target epsilon -> noise multiplier, epsilon spent);
* :mod:`.optimizer`: the noise, global or per tensor, secure mode, accumulation;
* :mod:`.engine`: :func:`make_private` and :func:`validate`.

Reads bounds only through :func:`lipkit.lipschitz_bound` and the facet registries.
"""

from lipkit.dp.accounting import PrivacyAccountant, noise_for_target
from lipkit.dp.engine import make_private, model_problems, private_optimizer, validate
from lipkit.dp.losses import PrivateLoss, loss_lipschitz, per_example_loss
from lipkit.dp.optimizer import DPOptimizer, gaussian_noise
from lipkit.dp.projection import L2BallProjection, materialize_constraints, project_constraints
from lipkit.dp.sampling import PrivateLoader
from lipkit.dp.sensitivity import SensitivityReport, network_sensitivity

__all__ = [
    "DPOptimizer",
    "L2BallProjection",
    "PrivacyAccountant",
    "PrivateLoader",
    "PrivateLoss",
    "SensitivityReport",
    "gaussian_noise",
    "loss_lipschitz",
    "make_private",
    "materialize_constraints",
    "private_optimizer",
    "model_problems",
    "network_sensitivity",
    "noise_for_target",
    "per_example_loss",
    "project_constraints",
    "validate",
]

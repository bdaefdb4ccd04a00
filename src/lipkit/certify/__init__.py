"""Certificates: margins to certified radii (with the forward round-off analysed), interval bounds and
the attacks that check them.

Owns :mod:`.margin` (Lipschitz-margin certificates), :mod:`.interval` (interval bound propagation with
float error) and :mod:`.attacks` (PGD and the certificate check).  Reads bounds only through
:func:`lipkit.lipschitz_bound` and the layers' registered facets.
"""

from lipkit.certify import attacks
from lipkit.certify.attacks import CertificateCheck, check_certificates, margin_loss, pgd
from lipkit.certify.interval import interval_bounds, interval_certified, interval_certified_accuracy
from lipkit.certify.margin import (
    CertificateResult,
    certified_accuracy,
    certified_radius,
    compute_certificates,
)

__all__ = [
    "CertificateCheck", "CertificateResult", "attacks", "certified_accuracy", "certified_radius",
    "check_certificates", "compute_certificates", "interval_bounds", "interval_certified",
    "interval_certified_accuracy", "margin_loss", "pgd",
]

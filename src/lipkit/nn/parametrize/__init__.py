"""Weight maps (``torch.nn.utils.parametrize`` parametrisations) that constrain a weight's norm.

* :class:`Orthogonal` / :class:`CayleyOrthogonal`: (semi-)orthogonal weights (l2, gradient-norm
  preserving);
* :class:`SpectralNorm`: ``W / sigma_max`` by persistent power iteration;
* :class:`AOL`: almost-orthogonal rescaling (Prach & Lampert 2022), ``||.||_2 <= 1`` guaranteed;
* :class:`OperatorNorm`: l_inf, l_1 and mixed operator norms (Kitouni et al.).
"""

from __future__ import annotations

from lipkit.nn.parametrize.aol import *  # noqa: F403
from lipkit.nn.parametrize.aol import __all__ as _a
from lipkit.nn.parametrize.opnorm import *  # noqa: F403
from lipkit.nn.parametrize.opnorm import __all__ as _o
from lipkit.nn.parametrize.orthogonal import *  # noqa: F403
from lipkit.nn.parametrize.orthogonal import __all__ as _r
from lipkit.nn.parametrize.spectral import *  # noqa: F403
from lipkit.nn.parametrize.spectral import __all__ as _s

__all__ = [*_a, *_o, *_r, *_s]

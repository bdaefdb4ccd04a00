"""lipkit: neural networks whose Lipschitz constant is known and bounded.

Everything public is importable from here: layers, :func:`lipschitz_bound`, certificates,
attacks, losses and export.
"""

from lipkit import attacks  # noqa: F401
from lipkit.bounds import *  # noqa: F403
from lipkit.certify import *  # noqa: F403
from lipkit.convnorm import *  # noqa: F403
from lipkit.data import load_dataset  # noqa: F401
from lipkit.estimation import Estimate, estimate  # noqa: F401
from lipkit.export import *  # noqa: F403
from lipkit.interval import *  # noqa: F403
from lipkit.layers.activations import *  # noqa: F403
from lipkit.layers.conv import *  # noqa: F403
from lipkit.layers.distance import *  # noqa: F403
from lipkit.layers.distance_kernels import get_backend as get_distance_backend  # noqa: F401
from lipkit.layers.distance_kernels import set_backend as set_distance_backend  # noqa: F401
from lipkit.layers.distance_kernels import use_backend as use_distance_backend  # noqa: F401
from lipkit.layers.linear import *  # noqa: F403
from lipkit.layers.pooling import *  # noqa: F403
from lipkit.layers.residual import *  # noqa: F403
from lipkit.losses import *  # noqa: F403

__version__ = "0.1.0"

"""Named composites: which LRP rule each layer type gets (zennit's names and maps)."""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from .core import ACTIVATION_TYPES, BATCHNORM_TYPES, Composite, MergeBatchNorm
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Pass, ZBox, ZPlus

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
ANY_LINEAR = CONV_TYPES + (nn.Linear,)
#: ReLU is left to autograd: its gradient passes relevance exactly
_PASS_TYPES = tuple(t for t in ACTIVATION_TYPES if t is not nn.ReLU) + BATCHNORM_TYPES


def _base(stabilizer):
    return [(_PASS_TYPES, Pass(stabilizer))]


def _canon(canonize: bool):
    return (MergeBatchNorm(),) if canonize else ()


def epsilon(epsilon=1e-6, stabilizer=1e-6, canonize=True, **_):
    """Epsilon everywhere (captum's LRP default, with ``epsilon=1e-9``)."""
    return Composite(_base(stabilizer) + [(ANY_LINEAR, Epsilon(epsilon))], canonizers=_canon(canonize))


def epsilon_plus(epsilon=1e-6, stabilizer=1e-6, canonize=True, **_):
    """z+ for convolutions, epsilon for dense layers."""
    return Composite(_base(stabilizer) + [(CONV_TYPES, ZPlus(stabilizer)), (nn.Linear, Epsilon(epsilon))],
                     canonizers=_canon(canonize))


def epsilon_plus_flat(epsilon=1e-6, stabilizer=1e-6, canonize=True, **_):
    """As ``epsilon_plus`` with the flat rule for the first layer."""
    c = epsilon_plus(epsilon, stabilizer, canonize)
    c.first_map = [(ANY_LINEAR, Flat(stabilizer))]
    return c


def epsilon_gamma_box(epsilon=1e-6, gamma=0.25, stabilizer=1e-6, low=0.0, high=1.0, canonize=True, **_):
    """z^B for the first convolution (inputs in ``[low, high]``), gamma for later
    convolutions, epsilon for dense layers."""
    return Composite(_base(stabilizer) + [(CONV_TYPES, Gamma(gamma, stabilizer)), (nn.Linear, Epsilon(epsilon))],
                     first_map=[(CONV_TYPES, ZBox(low, high, stabilizer))], canonizers=_canon(canonize))


def epsilon_alpha2_beta1(epsilon=1e-6, stabilizer=1e-6, canonize=True, **_):
    """alpha=2, beta=1 for convolutions, epsilon for dense layers."""
    return Composite(_base(stabilizer) + [(CONV_TYPES, AlphaBeta(2.0, 1.0, stabilizer)),
                                          (nn.Linear, Epsilon(epsilon))], canonizers=_canon(canonize))


def epsilon_alpha2_beta1_flat(epsilon=1e-6, stabilizer=1e-6, canonize=True, **_):
    """As ``epsilon_alpha2_beta1`` with the flat rule for the first layer."""
    c = epsilon_alpha2_beta1(epsilon, stabilizer, canonize)
    c.first_map = [(ANY_LINEAR, Flat(stabilizer))]
    return c


def z_plus(stabilizer=1e-6, canonize=True, **_):
    """z+ for every conv and dense layer (deep Taylor decomposition of ReLU nets)."""
    return Composite(_base(stabilizer) + [(ANY_LINEAR, ZPlus(stabilizer))], canonizers=_canon(canonize))


COMPOSITES: Dict[str, Callable[..., Composite]] = {
    f.__name__: f for f in (epsilon, epsilon_plus, epsilon_plus_flat, epsilon_gamma_box, epsilon_alpha2_beta1,
                            epsilon_alpha2_beta1_flat, z_plus)
}


def composite_names() -> List[str]:
    """Names accepted by ``LRP(composite=...)``."""
    return sorted(COMPOSITES)

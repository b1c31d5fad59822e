"""amcdyn: transient dynamics of RRAM analog-matrix-computing circuits in JAX."""

import importlib.metadata

from ._circuits import (
    AbstractCircuit as AbstractCircuit,
    AbstractDynamics as AbstractDynamics,
    INV as INV,
    MVM as MVM,
)
from ._opamp import OpAmp as OpAmp
from ._simulate import simulate as simulate, simulate_analytic as simulate_analytic
from ._solution import RESULTS as RESULTS, Solution as Solution


__version__ = importlib.metadata.version("amcdyn")

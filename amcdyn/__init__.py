"""amcdyn: transient dynamics of RRAM analog-matrix-computing circuits in JAX."""

import importlib.metadata

from . import mimo as mimo
from ._circuits import (
    INV as INV,
    MVM as MVM,
    AbstractCircuit as AbstractCircuit,
    AbstractDynamics as AbstractDynamics,
)
from ._converters import ADC as ADC, DAC as DAC
from ._devices import (
    AbstractDeviceStage as AbstractDeviceStage,
    ConductanceWindow as ConductanceWindow,
    Programming as Programming,
    ReadNoise as ReadNoise,
    StuckAt as StuckAt,
    Variation as Variation,
    WriteVerify as WriteVerify,
)
from ._ginv import GINV as GINV, Ridge as Ridge
from ._mc import monte_carlo_circuit as monte_carlo_circuit, perturb_circuit as perturb_circuit
from ._montecarlo import MCResult as MCResult, monte_carlo as monte_carlo
from ._ngspice import (
    SpiceSolution as SpiceSolution,
    simulate_spice as simulate_spice,
    spice_netlist as spice_netlist,
)
from ._opamp import OpAmp as OpAmp
from ._propagator import simulate_expm as simulate_expm
from ._simulate import simulate as simulate, simulate_analytic as simulate_analytic
from ._solution import RESULTS as RESULTS, Solution as Solution


__version__ = importlib.metadata.version("amcdyn")

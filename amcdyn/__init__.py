"""amcdyn: transient dynamics of RRAM analog-matrix-computing circuits in JAX."""

import importlib.metadata

from . import mimo as mimo
from ._blockamc import (
    BlockAMCSolution as BlockAMCSolution,
    blockamc_solve as blockamc_solve,
    blockamc_step_circuits as blockamc_step_circuits,
    compare_blockamc as compare_blockamc,
)
from ._circuits import (
    INV as INV,
    MVM as MVM,
    AbstractCircuit as AbstractCircuit,
    AbstractDynamics as AbstractDynamics,
)
from ._converters import ADC as ADC, DAC as DAC
from ._cost import (
    BlockAMCEnergy as BlockAMCEnergy,
    CostModel as CostModel,
    HardwareCost as HardwareCost,
    blockamc_cost as blockamc_cost,
    blockamc_energy as blockamc_energy,
    inv_cost as inv_cost,
)
from ._cs import LASSO as LASSO, cs_problem as cs_problem, lasso_solution as lasso_solution
from ._design import (
    DesignResult as DesignResult,
    Objective as Objective,
    Robust as Robust,
    design as design,
    design_multistart as design_multistart,
    load_design as load_design,
)
from ._devices import (
    AbstractDeviceStage as AbstractDeviceStage,
    ConductanceWindow as ConductanceWindow,
    Programming as Programming,
    ReadNoise as ReadNoise,
    StuckAt as StuckAt,
    Variation as Variation,
    WriteVerify as WriteVerify,
)
from ._egv import (
    EGV as EGV,
    EGVSolution as EGVSolution,
    dominant_eigenpair as dominant_eigenpair,
    google_matrix as google_matrix,
    simulate_egv as simulate_egv,
)
from ._ginv import GINV as GINV, Ridge as Ridge
from ._hpinv import (
    HPINVSolution as HPINVSolution,
    HPINVTrace as HPINVTrace,
    hpinv_mc_summary as hpinv_mc_summary,
    hpinv_monte_carlo as hpinv_monte_carlo,
    hpinv_refine as hpinv_refine,
    hpinv_solve as hpinv_solve,
)
from ._macro import Macro as Macro, MacroResult as MacroResult
from ._mc import monte_carlo_circuit as monte_carlo_circuit, perturb_circuit as perturb_circuit
from ._montecarlo import MCResult as MCResult, monte_carlo as monte_carlo
from ._ngspice import (
    SpiceSolution as SpiceSolution,
    simulate_spice as simulate_spice,
    spice_netlist as spice_netlist,
)
from ._noise import (
    NoiseSolution as NoiseSolution,
    noise_covariance as noise_covariance,
    simulate_noise as simulate_noise,
)
from ._opamp import OpAmp as OpAmp
from ._propagator import simulate_expm as simulate_expm
from ._rk import Unrolled as Unrolled
from ._simulate import simulate as simulate, simulate_analytic as simulate_analytic
from ._solution import RESULTS as RESULTS, Solution as Solution


__version__ = importlib.metadata.version("amcdyn")

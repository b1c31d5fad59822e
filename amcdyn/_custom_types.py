"""Type aliases shared by amcdyn's signatures (jaxtyping, named dims)."""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Float, Int


RealScalarLike: TypeAlias = float | int | Float[ArrayLike, ""]
Scalar: TypeAlias = Float[Array, ""]
IntScalar: TypeAlias = Int[Array, ""]

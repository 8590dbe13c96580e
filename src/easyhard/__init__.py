"""easyhard: how diffusion models learn data statistics, from easy to hard.

Subpackages follow the data flow of the theory: ``data`` (data models with exact statistics),
``diffusion`` (forward processes and parametrisations), ``oracles`` (exact denoisers),
``theory`` (population losses, Hermite coefficients, diffusion information exponent).
"""

from easyhard._validate import ConfigError

__version__ = "0.1.0"
__all__ = ["ConfigError", "__version__"]

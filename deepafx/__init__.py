"""deepafx: neural networks that drive real, non-differentiable audio plugins end to end.

Gradients through black-box plugins are estimated with SPSA (Spall, 1992;
DeepAFx, Ramírez et al., ICASSP 2021); a delay-invariant loss makes training
robust to plugin latency and polarity.
"""

__version__ = "0.1.0"

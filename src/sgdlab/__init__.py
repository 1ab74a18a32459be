"""sgdlab: train with stochastic gradient descent and measure what SGD does.

The mathematics is specified in SPEC.md (shared with the project); modules cite its sections.
"""

__version__ = "0.1.0"

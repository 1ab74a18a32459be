"""Shared pieces of the claim experiments (SPEC §4): one place each for what every claim
needs — :mod:`~sgdlab.experiments.kit.verdicts` (the verdict rules)."""

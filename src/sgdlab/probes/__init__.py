"""Quantities: functions that compute a number from a model and a batch (SPEC §3, §4.1–§4.5).

Instruments (when and how often a quantity is computed, logged and plotted) live in
:mod:`sgdlab.instruments`; this package only computes.
"""

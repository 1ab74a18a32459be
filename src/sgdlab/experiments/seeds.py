"""The five seed notes the claims come from (``shared/seeds/``), and which claim tests which.

One place for the report's grouping (SPEC §4: each claim names its seed where the SPEC
does; claims 1, 4 and 6–9 come from the seed that makes the statement they test).
"""

from __future__ import annotations

#: seed number → (file stem, title as the notes give it)
SEEDS: dict[str, tuple[str, str]] = {
    "000": ("000_667213b19eb919fa", "McAllester, TTIC 31230 (2020): the learning rate as "
                                    "temperature"),
    "001": ("001_2e60dba7d8231e21", "McAllester, TTIC 31230 (2020): heat capacity with loss "
                                    "as energy and learning rate as temperature"),
    "002": ("002_4097fcc85c143290", "McAllester, TTIC 31230 (2018): SGD — the classical "
                                    "convergence theorem, RMSProp, momentum and Adam, scaling "
                                    "learning rates with batch size, SGD as MCMC, an original "
                                    "SGD algorithm"),
    "003": ("003_11772880c4f89eae", "Li, Lyu & Arora (NeurIPS 2020): reconciling traditional "
                                    "optimization analyses and modern deep learning — the "
                                    "intrinsic learning rate"),
    "004": ("004_9e6536b38d11c4bb", "CMU 10-405/605 recitation: SGD recap, optimizing SGD, "
                                    "learning-rate tuning"),
}

#: claim number → seed number
CLAIM_SEED: dict[int, str] = {
    1: "000", 2: "001", 3: "000", 4: "002", 5: "003", 6: "002", 7: "002", 8: "002", 9: "002",
    10: "003", 11: "004", 12: "002", 13: "002", 14: "002", 15: "002", 16: "002", 17: "000",
    18: "001", 19: "003", 20: "003", 21: "003", 22: "003", 23: "003", 24: "004",
}


def seed_of(claim_id: str) -> str:
    """The seed number of a claim id such as ``"18-proof-step-3"`` (``"?"`` if unknown)."""
    try:
        return CLAIM_SEED.get(int(claim_id.split("-", 1)[0]), "?")
    except ValueError:
        return "?"

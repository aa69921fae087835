"""The small query/passage set every teacher test scores (pairs repeat on both sides, not in length order)."""

from __future__ import annotations

import numpy as np
import torch

CPU = torch.device("cpu")
QUERIES = [
    "What does the protein do?",
    "how does the glacier move",
    "coral reef",
    "Why does insulin affect glucose in urban patients during the winter?",
]
PASSAGES = [
    "The glacier moves slowly across the northern valley while the river carries sediment.",
    "protein",
    "A coral reef near the lagoon protects the coastal village from storms.",
    "Researchers found that insulin affects glucose.",
    "The enzyme changes the membrane of the mitochondria in chronic cases of the rare fever.",
]
# Pairs as indices into QUERIES and PASSAGES.
PAIR_Q = np.array([0, 0, 1, 2, 3, 3, 1, 2, 0, 3])
PAIR_P = np.array([1, 4, 0, 2, 3, 4, 1, 1, 0, 2])
ATOL = 1e-5

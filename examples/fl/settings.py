"""The federated settings the example compares the six methods in, and its quick subset.

- ``standard``: every client starts each round from the global model, a few local epochs.
- ``oneshot``: in round 1 every client trains long from its *own* random initialisation and
  the server aggregates once (the one-shot fusion of OTFusion's knowledge-transfer setting);
  a few ordinary rounds follow. The tables give the accuracy after round 1 and at the end.
- ``longlocal``: few rounds of long local training (clients drift far from the global model).
- ``widths``: clients of hidden widths 1x / 0.75x / 0.5x (by partition id, in turn), all
  aggregated into the widest; narrower clients train the leading slice of the global model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["FULL", "METHODS", "QUICK", "Setting"]


@dataclass(frozen=True)
class Setting:
    """One federated setting: its rounds and local epochs, and how the clients start."""

    name: str
    rounds: int
    epochs: int
    first_epochs: int | None = None  # local epochs of round 1 (oneshot), else ``epochs``
    fresh_init: bool = False  # round 1 from each client's own initialisation
    widths: tuple[float, ...] = (1.0,)  # hidden-width multipliers, assigned by partition id in turn


# name -> (server aggregation, client algorithm)
METHODS = {
    "FedAvg": ("fedavg", "local"),
    "OTFusion": ("ot", "local"),
    "FedMA": ("fedma", "local"),
    "GAMF": ("gamf", "local"),
    "MOON": ("fedavg", "moon"),
    "GAMF + MOON": ("gamf", "moon"),
}

FULL = {
    "standard": Setting("standard", rounds=20, epochs=2),
    "oneshot": Setting("oneshot", rounds=5, epochs=2, first_epochs=20, fresh_init=True),
    "longlocal": Setting("longlocal", rounds=5, epochs=20),
    "widths": Setting("widths", rounds=20, epochs=2, widths=(1.0, 0.75, 0.5)),
}

# 5 clients, one alpha: fewer rounds and epochs (FedMA still completes its layer-wise pass: 5
# rounds for the CNN); the one-shot round keeps its 20 local epochs (with 5, the clients are too
# weak for any fusion to say much: 21-71 % on MNIST with 300 label-skewed images each).
QUICK = {
    "standard": replace(FULL["standard"], rounds=5, epochs=1),
    "oneshot": replace(FULL["oneshot"], rounds=5, epochs=1),
    "longlocal": replace(FULL["longlocal"], rounds=5, epochs=4),
    "widths": replace(FULL["widths"], rounds=5, epochs=1),
}

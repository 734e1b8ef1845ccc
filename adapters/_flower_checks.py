"""Screening of Flower training replies: which clients may enter a round's aggregation.

A reply is left out (with a logged warning naming the node and the reason) when it carries
an error, has not exactly one ArrayRecord, lacks a usable example count, has a different key
set or shape from the reference model, holds NaN/Inf in a floating-point array, or has an
array whose dtype differs from the reference's and cannot be cast to it without loss:
floating arrays are cast to the reference's floating dtype (left out if a value overflows
it), integer and boolean arrays only when every value survives the round trip; a floating
array where the reference has an integer one (or the reverse) is left out.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, RecordDict

__all__ = ["Accepted", "Signature", "conform", "screen_replies", "signature_of"]

logger = logging.getLogger("gamfsolve.adapters.flower")

Signature = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype string such as "<f4")


@dataclass(frozen=True)
class Accepted:
    """One client's update that passed the checks."""

    node_id: int
    arrays: dict[str, np.ndarray]
    weight: float
    content: RecordDict


def signature_of(arrays: Mapping[str, np.ndarray]) -> Signature:
    """Name -> (shape, dtype) of a model's arrays; the structure updates must match."""
    return {k: (tuple(v.shape), np.dtype(v.dtype).str) for k, v in arrays.items()}


def _family(dtype: np.dtype) -> str:
    """'f' for floating, 'i' for integers (signed or not), else the dtype's kind."""
    if np.issubdtype(dtype, np.floating):
        return "f"
    return "i" if dtype.kind in "iu" else dtype.kind


def _cast(name: str, x: np.ndarray, target: np.dtype) -> np.ndarray | str:
    """``x`` in the reference's dtype ``target``, or why it cannot be cast safely."""
    if x.dtype == target:
        return x
    if _family(x.dtype) != _family(target):
        return f"{name!r} has dtype {x.dtype}, expected {target} (not castable without changing its meaning)"
    if _family(target) == "f":
        if not np.all(np.isfinite(x)):
            return f"{name!r} contains NaN or Inf"
        with np.errstate(over="ignore"):
            y = x.astype(target)
        if not np.all(np.isfinite(y)):
            return f"{name!r} has values beyond the range of {target} (sent as {x.dtype})"
        return y
    y = x.astype(target)
    if not np.array_equal(y.astype(x.dtype), x):
        return f"{name!r} has values that {target} cannot hold (sent as {x.dtype})"
    return y


def _node(msg: Message) -> int:
    try:
        return int(msg.metadata.src_node_id)
    except (AttributeError, TypeError, ValueError):
        return -1


def _weight(content: RecordDict, key: str, required: bool) -> float | str:
    """The example count of a reply, or the reason it is unusable."""
    records = list(content.metric_records.values())
    if len(records) != 1:
        return 1.0 if not required else f"expected one MetricRecord, found {len(records)}"
    value = records[0].get(key)
    if value is None:
        return 1.0 if not required else f"MetricRecord has no {key!r} entry"
    if isinstance(value, list) or not math.isfinite(float(value)) or float(value) <= 0:
        return 1.0 if not required else f"{key!r} must be a positive finite number, got {value!r}"
    return float(value)


def _arrays(content: RecordDict) -> dict[str, np.ndarray] | str:
    records = list(content.array_records.values())
    if len(records) != 1:
        return f"expected one ArrayRecord, found {len(records)}"
    try:
        return {k: v.numpy() for k, v in records[0].items()}
    except Exception as exc:  # a corrupt payload must not stop the round
        return f"arrays could not be decoded ({exc})"


def _fits(shape: tuple[int, ...], reference: tuple[int, ...], narrower: bool) -> bool:
    if shape == reference:
        return True
    return narrower and len(shape) == len(reference) and all(0 < s <= r for s, r in zip(shape, reference, strict=True))


def conform(arrays: Mapping[str, np.ndarray], reference: Signature, *, narrower: bool = False) -> dict[str, np.ndarray] | str:
    """``arrays`` with the reference's keys, shapes and dtypes (cast where safe), or why not.

    With ``narrower``, an array may be smaller than the reference's along any axis (a client
    of smaller width). A floating array with NaN/Inf never conforms.
    """
    if set(arrays) != set(reference):
        missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
        return f"wrong key set (missing {missing}, unexpected {extra})"
    out: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in reference.items():
        x = arrays[name]
        if not _fits(tuple(x.shape), shape, narrower):
            return f"{name!r} has shape {tuple(x.shape)}, expected {shape}" + (" or narrower" if narrower else "")
        y = _cast(name, x, np.dtype(dtype))
        if isinstance(y, str):
            return y
        if _family(y.dtype) == "f" and not np.all(np.isfinite(y)):
            return f"{name!r} contains NaN or Inf"
        out[name] = y
    return out


def screen_replies(
    replies: Iterable[Message],
    reference: Signature | None,
    *,
    weight_key: str,
    need_weight: bool,
    server_round: int,
    narrower: bool = False,
) -> list[Accepted]:
    """The replies fit to aggregate; every rejected one is logged at WARNING level.

    Without a ``reference`` (the global model the server sent), the most common structure
    among the replies is taken as the reference.
    """
    decoded: list[tuple[int, dict[str, np.ndarray], float, RecordDict]] = []
    for msg in replies:
        node = _node(msg)
        if msg.has_error():
            logger.warning("round %d: node %d failed and is left out: %s", server_round, node, msg.error.reason)
            continue
        arrays = _arrays(msg.content)
        weight = _weight(msg.content, weight_key, need_weight)
        if isinstance(arrays, str) or isinstance(weight, str):
            reason = arrays if isinstance(arrays, str) else weight
            logger.warning("round %d: node %d left out: %s", server_round, node, reason)
            continue
        decoded.append((node, arrays, weight, msg.content))
    if reference is None and decoded:
        keys = Counter(repr(sorted(signature_of(a).items())) for _, a, _, _ in decoded)
        common = keys.most_common(1)[0][0]
        reference = next(signature_of(a) for _, a, _, _ in decoded if repr(sorted(signature_of(a).items())) == common)
    accepted: list[Accepted] = []
    for node, arrays, weight, content in decoded:
        fitted = conform(arrays, reference, narrower=narrower) if reference is not None else arrays
        if isinstance(fitted, str):
            logger.warning("round %d: node %d left out: %s", server_round, node, fitted)
            continue
        cast = sorted(k for k in fitted if fitted[k].dtype != arrays[k].dtype)
        if cast:
            logger.warning("round %d: node %d sent %s in another dtype; cast to the global model's", server_round, node, cast)
        accepted.append(Accepted(node, fitted, weight, content))
    return accepted

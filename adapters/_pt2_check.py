"""Refuse ``.pt2`` archives whose loading could run code, before :func:`torch.export.load` sees them.

``torch.export.load`` unpickles weights and constants flagged ``use_pickle``, custom and opaque
objects, legacy weight files and (after a failed safe attempt) the sample inputs; it passes
symbolic-shape strings to ``sympy.sympify`` (``eval``), ``exec``s the program's guard code when
the module is built, imports modules named in pytree specs, resolves graph targets by dotted
name anywhere under ``torch`` (``torch.os.system``) and loads AOTInductor shared libraries. This
module reads the archive with :mod:`zipfile` and :mod:`json` only and accepts it when every one
of those paths is absent or holds plain data: tensors, ATen/prims operators, arithmetic, and
shape expressions built from a fixed set of SymPy names. A file that fails is refused with
:class:`~gamfsolve.UnsafeFileError`; its bytes are then never given to torch.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

from gamfsolve import FusionError, UnsafeFileError

__all__ = ["check_pt2_bytes"]

_OPERATOR = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
    "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "matmul", "truth",
}
_OP_NAMESPACES = ("torch.ops.aten.", "torch.ops.prims.", "torch.ops.higher_order.")
_TREE_TYPES = {
    None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict",
    "torch.fx.immutable_collections.immutable_list", "torch.fx.immutable_collections.immutable_dict",
}
#: names a shape expression may use (SymPy's and torch.utils._sympy.functions' classes, srepr keywords)
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "Equality", "Unequality", "And", "Or", "Not", "true", "false", "BooleanTrue", "BooleanFalse", "oo", "zoo",
    "nan", "Infinity", "NegativeInfinity", "NaN", "Half", "One", "Zero", "NegativeOne", "Piecewise", "ExprCondPair",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "TruncToInt", "TruncToFloat", "IntTrueDiv", "FloatTrueDiv",
    "ToFloat", "Identity", "IsNonOverlappingAndDenseIndicator", "RoundToInt", "RoundDecimal", "Trunc",
    "positive", "negative", "integer", "real", "nonnegative", "nonpositive", "finite", "commutative", "nonzero",
    "precision", "evaluate", "True", "False", "None",
}
_GUARD_NAMES = {"L", "True", "False", "None", "Max", "Min", "math", "torch"}
_GUARD_ATTRS = {"size", "stride", "storage_offset", "dim", "shape", "floor", "ceil", "sym_max", "sym_min"}
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_pt2_bytes(data: bytes, name: str) -> None:
    """Raise :class:`~gamfsolve.UnsafeFileError` (or :class:`~gamfsolve.FusionError` for a file that is
    not a ``.pt2`` archive) unless loading ``data`` with :func:`torch.export.load` runs no code.

    ``name`` names the file in messages.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise FusionError(f"cannot read {name}: not a torch.export .pt2 archive (a zip file): {exc}") from exc
    roots = [m[: -len("archive_version")] for m in members if m.endswith("archive_version")]
    if len(roots) != 1 or any("/" in r.rstrip("/") for r in roots):
        raise FusionError(f"cannot read {name}: not a torch.export .pt2 archive of a supported version")
    root = roots[0]
    if len(set(members)) != len(members) or not all(m.startswith(root) for m in members):
        # zip readers disagree on which of two same-named members they return, and torch reads
        # the archive under its first member's folder: both must leave nothing unchecked
        raise UnsafeFileError(f"{name} holds duplicate members or members outside its archive folder")
    rel = {m[len(root):]: m for m in members}

    def read(path: str) -> bytes:
        try:
            return archive.read(rel[path])
        except KeyError:
            raise FusionError(f"cannot read {name}: the archive lacks {path}") from None
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise FusionError(f"cannot read {name}: member {path} is damaged ({exc})") from exc

    for path in rel:
        if path.startswith("data/aotinductor/"):
            raise UnsafeFileError(f"{name} holds compiled AOTInductor code ({path}); it is not loaded")
    models = [p[len("models/"): -len(".json")] for p in rel if p.startswith("models/") and p.endswith(".json")]
    if not models:
        raise FusionError(f"cannot read {name}: the archive holds no exported program")
    for model in models:
        for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
            if legacy in rel:
                raise UnsafeFileError(f"{name} stores {legacy} in the legacy pickled format; re-save it with torch.export.save")
        _check_payloads(_json(read(f"data/weights/{model}_weights_config.json"), name), name, "weight")
        if f"data/constants/{model}_constants_config.json" in rel:
            _check_payloads(_json(read(f"data/constants/{model}_constants_config.json"), name), name, "constant")
        if f"data/sample_inputs/{model}.pt" in rel:
            _check_tensors_only(read(f"data/sample_inputs/{model}.pt"), name)
        _check_program(read(f"models/{model}.json"), name)


def _json(raw: bytes, name: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FusionError(f"cannot read {name}: a damaged JSON member ({exc})") from exc


def _check_payloads(config: Any, name: str, what: str) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise FusionError(f"cannot read {name}: a damaged {what} table")
    for fqn, meta in entries.items():
        path = meta.get("path_name", "") if isinstance(meta, dict) else ""
        if not isinstance(meta, dict) or meta.get("use_pickle") or not isinstance(path, str):
            raise UnsafeFileError(f"{name}: {what} {fqn!r} is stored as a pickle, which is never unpickled; "
                                  "save plain tensors")
        if what == "constant" and not path.startswith("tensor_"):
            raise UnsafeFileError(f"{name}: constant {fqn!r} is a pickled Python object ({path}); it is not loaded")


def _check_tensors_only(raw: bytes, name: str) -> None:
    """The sample inputs must load with the restricted (weights-only) unpickler, or torch falls back."""
    if not raw:
        return
    import torch

    try:
        torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler refuses with several types
        raise UnsafeFileError(f"{name}: its sample inputs are not plain tensors (a pickle that would need "
                              "arbitrary unpickling, which is refused)") from exc


def _check_program(raw: bytes, name: str) -> None:
    text = raw.decode("utf-8", errors="replace")
    if "__enum__" in text or "default_factory" in text:
        raise UnsafeFileError(f"{name}: its program names Python objects to import; it is not loaded")
    program = _json(raw, name)
    if not isinstance(program, dict):
        raise FusionError(f"cannot read {name}: a damaged program")
    for code in program.get("guards_code") or []:
        _check_expr(code, name, _GUARD_NAMES, guard=True)
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str):
            _check_target(value, name)
        elif key == "expr_str" and isinstance(value, str):
            _check_expr(value, name, _SYMPY_NAMES, guard=False)
        elif key in ("in_spec", "out_spec") and isinstance(value, str) and value:
            _check_tree(_json(value.encode(), name), name)


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                yield k, v
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


def _check_target(target: str, name: str) -> None:
    if target.startswith(_OP_NAMESPACES) and all(_PLAIN.match(p) for p in target.split(".")):
        return
    head, _, tail = target.partition(".")
    if (head == "_operator" and tail in _OPERATOR) or (head == "math" and _PLAIN.match(tail)):
        return
    if head == "torch" and re.match(r"_?sym_[a-z_]+\Z", tail):
        return
    raise UnsafeFileError(f"{name}: its graph calls {target!r}, not an ATen/prims operator or arithmetic; "
                          "it is not loaded")


def _check_tree(spec: Any, name: str) -> None:
    for key, value in _walk(spec if isinstance(spec, (dict, list)) else []):
        if key == "type" and value not in _TREE_TYPES:
            raise UnsafeFileError(f"{name}: its inputs or outputs use the Python type {value!r}; only tuples, "
                                  "lists and dicts of tensors are loaded")


def _check_expr(code: Any, name: str, names: set[str], *, guard: bool) -> None:
    """A shape expression or guard may hold only whitelisted names, numbers and plain strings."""
    what = "guard" if guard else "shape expression"
    if isinstance(code, str) and any(c in code for c in "#\\\n\r;"):
        raise UnsafeFileError(f"{name}: a {what} holds comments, escapes or line breaks; it is not loaded")
    try:
        tree = ast.parse(code, mode="eval") if isinstance(code, str) and len(code) < 10_000 else None
    except (SyntaxError, ValueError):
        tree = None
    if tree is None:
        raise UnsafeFileError(f"{name}: a {what} is not a plain expression; it is not loaded")
    allowed = (ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Call, ast.keyword, ast.Name,
               ast.Load, ast.Constant, ast.Subscript, ast.Attribute, ast.Tuple, ast.operator, ast.unaryop,
               ast.cmpop, ast.boolop)
    for node in ast.walk(tree):
        bad = not isinstance(node, allowed)
        bad |= isinstance(node, ast.Name) and node.id not in names
        bad |= isinstance(node, ast.Attribute) and (not guard or node.attr not in _GUARD_ATTRS)
        bad |= isinstance(node, ast.Subscript) and not guard
        bad |= isinstance(node, ast.keyword) and (node.arg is None or node.arg not in names)
        bad |= isinstance(node, ast.Constant) and isinstance(node.value, str) and not _PLAIN.match(node.value)
        bad |= isinstance(node, ast.Constant) and isinstance(node.value, (bytes, complex))
        if bad:
            raise UnsafeFileError(f"{name}: a {what} uses {ast.dump(node)[:60]}, which is not plain shape "
                                  "arithmetic; it is not loaded")

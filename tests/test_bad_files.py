"""Hostile model files: no reader runs their payload; each is refused with a clear error (CLI exit 3)."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from bad_files import PT2_ATTACKS, evil_pickle, evil_torch_save, export_mlp  # noqa: E402
from gamfsolve.adapters import torch as gt  # noqa: E402
from torch import nn  # noqa: E402

from gamfsolve import FusionError, UnsafeFileError  # noqa: E402
from gamfsolve.cli import main  # noqa: E402

FACTORY = "gamfsolve_bad_files_factory:small"


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    export_mlp(path)
    return path


@pytest.fixture(autouse=True)
def _quiet_torch():
    logging.disable(logging.CRITICAL)  # torch logs tracebacks while it fails on damaged archives
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("attack", sorted(PT2_ATTACKS))
def test_pt2_attack_refused_by_every_reader(attack, clean_pt2, tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt2"
    PT2_ATTACKS[attack](clean_pt2, evil, marker)
    with pytest.raises(UnsafeFileError, match=r"evil\.pt2"):
        gt.load_program(evil)
    with pytest.raises(UnsafeFileError):
        gt.load_state(evil)
    assert main(["fuse", str(clean_pt2), str(evil), "-o", str(tmp_path / "out.pt2"), "-q"]) == 3
    assert "evil.pt2" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "out.pt2").exists()


@pytest.mark.parametrize("attack", ["sample_inputs_pickle", "weight_use_pickle", "sympy_expression"])
def test_attacks_are_real(attack, clean_pt2, tmp_path):
    """Control: plain torch.export.load runs these payloads, so the refusals above guard something."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt2"
    PT2_ATTACKS[attack](clean_pt2, evil, marker)
    try:
        torch.export.load(str(evil)).module()
    except Exception:  # the payload runs before torch fails on what it unpickled
        pass
    if not marker.exists():
        pytest.skip(f"this torch no longer runs the {attack} payload")


def test_clean_pt2_loads(clean_pt2):
    program = gt.load_program(clean_pt2)
    assert program.module()(torch.randn(7, 3)).shape == (7, 2)


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04broken"])
def test_damaged_pt2(content, tmp_path):
    path = tmp_path / "bad.pt2"
    path.write_bytes(content)
    with pytest.raises(FusionError, match=r"bad\.pt2"):
        gt.load_program(path)


def test_pt2_member_damaged(clean_pt2, tmp_path):
    from bad_files import rewrite

    bad = tmp_path / "bad.pt2"
    rewrite(clean_pt2, bad, lambda n, d: b"{not json" if n == "models/model.json" else None)
    with pytest.raises(FusionError, match=r"bad\.pt2"):
        gt.load_program(bad)


def _factory_module(tmp_path, monkeypatch) -> None:
    (tmp_path / "gamfsolve_bad_files_factory.py").write_text(
        "from torch import nn\n\ndef small():\n    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_save_zip"])
def test_pickled_state_dict(kind, tmp_path, monkeypatch, capsys):
    _factory_module(tmp_path, monkeypatch)
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(evil_pickle(marker) if kind == "raw_pickle" else evil_torch_save(marker))
    good = tmp_path / "good.pt"
    torch.save(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict(), good)
    with pytest.raises(FusionError):
        gt.load_state(evil, FACTORY)
    code = main(["fuse", str(good), str(evil), "-o", str(tmp_path / "out.pt"), "--model", FACTORY,
                 "--input-shape", "3", "-q"])
    assert code == 3
    assert not marker.exists()


def test_safetensors_bad_header(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    _factory_module(tmp_path, monkeypatch)
    bad = tmp_path / "bad.safetensors"
    header = json.dumps({"0.weight": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 10**12]}}).encode()
    bad.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(FusionError):
        gt.load_state(bad, FACTORY)


def _keras_file(tmp_path: Path, config_edit) -> Path:
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    clean = tmp_path / "clean.keras"
    model.save(clean)
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                config_edit(config)
                data = json.dumps(config).encode()
            zout.writestr(info, data)
    return evil


def _lambda_layer(marker: Path):
    import marshal

    code = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]").__code__
    return {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
            "config": {"name": "evil", "function": {"class_name": "__lambda__", "config": {
                "code": __import__("base64").b64encode(marshal.dumps(code)).decode(), "defaults": None,
                "closure": None}}, "arguments": {}}}


def _foreign_function(marker: Path):
    return {"module": "builtins", "class_name": "function", "config": "exec", "registered_name": "exec"}


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.parametrize("payload", ["lambda", "foreign_module"])
def test_keras_payload_refused(payload, tmp_path, capsys):
    gk = pytest.importorskip("gamfsolve.adapters.keras")
    marker = tmp_path / "marker"

    def edit(config):
        layers = config["config"]["layers"]
        if payload == "lambda":
            layers.insert(2, _lambda_layer(marker))
        else:
            layers[1]["config"]["activation"] = _foreign_function(marker)

    evil = _keras_file(tmp_path, edit)
    with pytest.raises(FusionError, match="safe mode"):
        gk.load_model(evil)
    assert main(["fuse", str(tmp_path / "clean.keras"), str(evil), "-o", str(tmp_path / "o.keras"), "-q"]) == 3
    assert not marker.exists()
    if payload == "lambda":  # control: outside safe mode Keras runs it
        import keras

        keras.saving.load_model(evil, safe_mode=False)
        assert marker.exists()


def test_pt2_from_buffer_is_never_reread(clean_pt2, tmp_path, monkeypatch):
    """The checked bytes are the loaded bytes: a file swapped after the check is not read again."""
    data = clean_pt2.read_bytes()
    seen = []
    real = torch.export.load

    def spy(f, *a, **k):
        seen.append(type(f))
        return real(f, *a, **k)

    monkeypatch.setattr(torch.export, "load", spy)
    gt.load_program(clean_pt2)
    assert seen == [io.BytesIO]
    assert clean_pt2.read_bytes() == data


def test_pt2_duplicate_member_refused(clean_pt2, tmp_path):
    """Two members of one name: zipfile returns the last, other readers the first; refused."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(clean_pt2) as zin, zipfile.ZipFile(evil, "w") as zout:
        root = zin.namelist()[0].split("/")[0] + "/"
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zout.writestr(root + "data/sample_inputs/model.pt", evil_torch_save(marker))
    with pytest.raises(UnsafeFileError, match="duplicate"):
        gt.load_program(evil)
    assert not marker.exists()


@pytest.mark.parametrize("guard", ["L['x'].size()[0] >= 1 # note", "L['x'].size()[0] >= \\\n 1"])
def test_pt2_guard_with_comment_or_escape_refused(guard, clean_pt2, tmp_path):
    from bad_files import rewrite

    def edit(name: str, data: bytes) -> bytes | None:
        if name != "models/model.json":
            return None
        program = json.loads(data)
        program["guards_code"] = [guard]
        return json.dumps(program).encode()

    evil = tmp_path / "evil.pt2"
    rewrite(clean_pt2, evil, edit)
    with pytest.raises(UnsafeFileError, match="guard"):
        gt.load_program(evil)


def test_pt2_plain_guard_accepted(clean_pt2, tmp_path):
    from bad_files import rewrite

    def edit(name: str, data: bytes) -> bytes | None:
        if name != "models/model.json":
            return None
        program = json.loads(data)
        program["guards_code"] = ["L['input'].size()[1] == 3"]
        return json.dumps(program).encode()

    plain = tmp_path / "plain.pt2"
    rewrite(clean_pt2, plain, edit)
    assert gt.load_program(plain).module()(torch.randn(2, 3)).shape == (2, 2)

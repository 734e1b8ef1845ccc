"""The command line on bad input: exit statuses as documented, checks before work, no temporary files left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from gamfsolve.adapters import torch as gt  # noqa: E402
from torch import nn  # noqa: E402

from gamfsolve.cli import main  # noqa: E402
from gamfsolve.cli._common import CliError, remove_stale_temps, write_atomic  # noqa: E402


def _export(path: Path, seed: int, act: type[nn.Module] = nn.ReLU, batch: int = 5) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 2))
    ep = torch.export.export(model, (torch.randn(batch, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(path))


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("programs")
    a, b, tanh = folder / "a.pt2", folder / "b.pt2", folder / "tanh.pt2"
    _export(a, 0)
    _export(b, 1)
    _export(tanh, 1, nn.Tanh)
    return a, b, tanh


USAGE = [
    (["--seed", "-1"], "--seed"),
    (["--option", "max_iter=x"], "max_iter"),
    (["--option", "max_iter=2.5"], "max_iter"),
    (["--option", "universe=no"], "universe"),
    (["--option", "tau0=\"1\""], "tau0"),
    (["--option", "nope=1"], "nope"),
    (["--option", "affinity=nearest"], "affinity"),
    (["--option", "balance=1"], "balance"),
    (["--input-shape", "0,x"], "input-shape"),
    (["--weights", "-1", "1"], "weights"),
    (["--weights", "nan", "1"], "weights"),
    (["--weights", "0", "0"], "weights"),
    (["--weights", "1"], "weights"),
    (["--method", "weight_matching", "--option", "max_iter=0"], "max_iter"),
]


@pytest.mark.parametrize(("extra", "named"), USAGE)
def test_usage_errors_before_any_model_is_read(extra, named, tmp_path, capsys):
    missing = [str(tmp_path / "a.pt2"), str(tmp_path / "b.pt2")]  # never read: usage comes first
    assert main(["fuse", *missing, "-o", str(tmp_path / "out.pt2"), *extra]) == 2
    assert named in capsys.readouterr().err


def test_argparse_usage_exit_2(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["fuse", "a.pt2", "b.pt2", "-o", "f.pt2", "--seed", "x"])
    assert info.value.code == 2


def test_unwritable_output_found_before_reading(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    missing = [str(tmp_path / "a.pt2"), str(tmp_path / "b.pt2")]
    assert main(["fuse", *missing, "-o", str(blocker / "out.pt2")]) == 5
    assert main(["fuse", *missing, "-o", str(tmp_path / "no" / "out.pt2")]) == 5
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_folder_exit_5(programs, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["fuse", str(programs[0]), str(programs[1]), "-o", str(folder / "out.pt2"), "-q"]) == 5
    finally:
        folder.chmod(0o755)


def test_unreadable_input_exit_3(programs, tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"garbage")
    assert main(["fuse", str(programs[0]), str(bad), "-o", str(tmp_path / "o.pt2"), "-q"]) == 3
    assert main(["fuse", str(programs[0]), str(tmp_path / "none.pt2"), "-o", str(tmp_path / "o.pt2"), "-q"]) == 3


def test_different_functions_exit_4(programs, tmp_path, capsys):
    a, _, tanh = programs
    assert main(["fuse", str(a), str(tanh), "-o", str(tmp_path / "o.pt2"), "-q"]) == 4
    assert "tanh" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_fused_program_keeps_dynamic_batch(programs, tmp_path):
    out = tmp_path / "fused.pt2"
    assert main(["fuse", str(programs[0]), str(programs[1]), "-o", str(out), "-q"]) == 0
    module = gt.load_program(out).module()
    for batch in (1, 5, 9):
        assert module(torch.randn(batch, 3)).shape == (batch, 2)


def test_huge_weights_give_a_real_model(programs, tmp_path):
    out = tmp_path / "fused.pt2"
    assert main(["fuse", str(programs[0]), str(programs[1]), "-o", str(out), "--weights", "1e308", "1e308",
                 "--method", "average", "-q"]) == 0
    state = gt.load_program(out).state_dict
    a = gt.load_program(programs[0]).state_dict
    b = gt.load_program(programs[1]).state_dict
    torch.testing.assert_close(state["0.weight"], (a["0.weight"] + b["0.weight"]) / 2)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_removed(tmp_path):
    target = tmp_path / "fused.pt2"
    stale = tmp_path / f".fused.{_dead_pid()}-abc123.tmp.pt2"
    live = tmp_path / f".fused.{os.getppid()}-abc123.tmp.pt2"
    foreign = tmp_path / ".fused.notours.tmp.pt2"
    other = tmp_path / f".other.{_dead_pid()}-abc123.tmp.pt2"
    for f in (stale, live, foreign, other):
        f.write_bytes(b"x")
    remove_stale_temps(target)
    assert not stale.exists()
    assert live.exists() and foreign.exists() and other.exists()


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "fused.pt2"

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(CliError) as info:
        write_atomic(target, fail)
    assert info.value.status == 5
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_writing_leaves_nothing(tmp_path, signum):
    target = tmp_path / "fused.pt2"

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        os.kill(os.getpid(), signum)

    with pytest.raises((SystemExit, KeyboardInterrupt)):
        write_atomic(target, interrupted)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is not None


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigint_cleans_up_even_where_it_was_ignored(tmp_path):
    target = tmp_path / "fused.pt2"
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a library in the same process may leave it
    try:
        def interrupted(tmp: Path) -> None:
            tmp.write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGINT)

        with pytest.raises(KeyboardInterrupt):
            write_atomic(target, interrupted)
        assert list(tmp_path.iterdir()) == []
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the caller's handler is restored
    finally:
        signal.signal(signal.SIGINT, before)


def test_bfloat16_programs(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).to(torch.bfloat16)
        x = torch.randn(5, 3, dtype=torch.bfloat16)
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        paths.append(tmp_path / f"m{seed}.pt2")
        torch.export.save(ep, str(paths[-1]))
    out = tmp_path / "fused.pt2"
    assert main(["fuse", *map(str, paths), "-o", str(out), "-q"]) == 0
    program = gt.load_program(out)
    assert program.state_dict["0.weight"].dtype == torch.bfloat16
    assert program.module()(torch.randn(7, 3, dtype=torch.bfloat16)).shape == (7, 2)

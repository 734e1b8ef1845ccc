"""FedGAMF on Flower's Deployment Runtime: a SuperLink and two SuperNodes as processes, then
``flwr run`` of examples/fl/deploy for two rounds.

Skipped, with the reason, when the runtime cannot start here (its commands are missing, or
the SuperLink does not listen within a minute); a run that starts and then fails fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "fl" / "deploy"
COMMANDS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp", "flwr")
START_S, RUN_S = 60, 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wrappers(bin_dir: Path) -> None:
    """Flower's commands run by this interpreter (its scripts' own shebangs may name another)."""
    bin_dir.mkdir()
    here = Path(sys.executable).parent
    for name in COMMANDS:
        script = here / name if (here / name).exists() else shutil.which(name)
        if script is None:
            pytest.skip(f"Flower's deployment runtime cannot start here: the command {name!r} is not installed")
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
        wrapper.chmod(0o755)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started processes; each one's process group is ended afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start(cmd: list[str], log: Path, env: dict[str, str], started: list[subprocess.Popen[bytes]]) -> None:
    with log.open("wb") as out:
        started.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.mark.slow
def test_superlink_and_two_supernodes_run_two_rounds(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    _wrappers(tmp_path / "bin")
    home = tmp_path / "flwr-home"
    home.mkdir()
    link, nodes = _free_port(), [_free_port(), _free_port()]
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local-deployment"\n\n'
        f'[superlink.local-deployment]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {
        **os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
        "VIRTUAL_ENV": sys.prefix, "PYTHONPATH": "",
    }
    _start(
        ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link), "--database",
         str(tmp_path / "state.db"), "--disable-runtime-dependency-installation"],
        tmp_path / "superlink.log", env, processes,
    )
    deadline = time.monotonic() + START_S
    while not _listening(link):
        if processes[0].poll() is not None or time.monotonic() > deadline:
            pytest.skip(f"Flower's SuperLink did not start listening within {START_S} s:\n{_tail(tmp_path / 'superlink.log')}")
        time.sleep(0.5)
    for i, port in enumerate(nodes):
        _start(
            ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}", "--port", str(port),
             "--node-config", f"partition-id={i} num-partitions=2"],
            tmp_path / f"supernode{i}.log", env, processes,
        )
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    result = tmp_path / "result.json"
    run = subprocess.run(
        ["flwr", "run", str(app), "local-deployment", "--stream", "--run-config",
         f'num-server-rounds=2 per-client=200 n-test=500 result-path="{result}"'],
        capture_output=True, text=True, env=env, timeout=RUN_S, check=False,
    )
    logs = run.stdout[-3000:] + run.stderr[-3000:] + "".join(_tail(tmp_path / f"supernode{i}.log") for i in (0, 1))
    assert run.returncode == 0 and result.exists(), logs
    got = json.loads(result.read_text())
    assert got["nodes"] == 2
    assert sorted(got["accuracy"]) == ["0", "1", "2"]  # the initial model and two rounds
    assert got["accuracy"]["2"] > got["accuracy"]["0"] + 0.2, got  # it learned (about 0.08 -> 0.44 when measured)
    assert [m["clients"] for m in got["match_log"]] == [2, 2]  # both SuperNodes' models fused each round

"""Start-up: the commands that open no libp2p host do not import libp2p, trio or OpenTelemetry's
SDK, through the real entry point; and the node key file that ``serve`` keeps.

Deterministic checks of what is imported, not timings: ``python -m tests.bench_startup`` prints
the start-up times.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from taleus_bootstrap import load_or_create_node_key
from taleus_bootstrap._nodekey import node_key_peer_id
from taleus_bootstrap.cli._nodedir import NodeDir

from .clirun import cli_env

# Runs the CLI's main() with the given arguments, then reports which heavy modules it imported.
PROBE = """
import json, sys
from taleus_bootstrap.cli import main
status = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
heavy = (
    "libp2p", "opentelemetry.sdk", "trio", "taleus_bootstrap._manager", "taleus_bootstrap._libp2p"
)
print(json.dumps({"status": status, "imported": [m for m in heavy if m in sys.modules]}))
"""


def _probe(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("startup") / "node"
    NodeDir.create(path)
    return path


LIGHT_COMMANDS = [
    ["--version"],
    ["--help"],
    ["invite", "--help"],
    ["serve", "--help"],
    ["dial", "--help"],
    ["resolve", "--help"],
    ["demo", "--help"],
    ["loadtest", "--help"],
    ["tokens"],
    ["tokens", "list", "--help"],
    ["audit"],
    ["audit", "verify", "--help"],
]


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_commands_without_a_host_do_not_import_libp2p_nor_trio(args: list[str]) -> None:
    report = _probe(*args)
    assert report["status"] in (0, 2, None), report  # a bare group shows its usage: 2 in click 8.2
    assert report["imported"] == [], report


def test_store_commands_do_not_import_libp2p_nor_trio(node_dir: Path) -> None:
    d = str(node_dir)
    for args in (
        ["invite", "--data-dir", d, "--role", "stock", "--addr", "/ip4/127.0.0.1/tcp/4001"],
        ["tokens", "list", "--data-dir", d],
        ["audit", "verify", "--data-dir", d],
        ["audit", "tail", "--data-dir", d],
    ):
        report = _probe(*args)
        assert report["status"] in (0, None), (args, report)
        assert report["imported"] == [], (args, report)


def test_package_names_are_imported_on_first_use() -> None:
    code = (
        "import sys, taleus_bootstrap as t; before = 'libp2p' in sys.modules; "
        "from taleus_bootstrap import new_bootstrap_host; "
        "names = [n for n in t.__all__ if getattr(t, n, None) is None]; "
        "print(before, 'libp2p' in sys.modules, names, sorted(t.__all__) == sorted(set(dir(t)) "
        "& set(t.__all__)), sorted(t._MODULE_OF) == sorted(set(t.__all__) - {'__version__'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=cli_env()
    )
    assert proc.stdout.split() == ["False", "True", "[]", "True", "True"], proc.stderr


def test_load_or_create_node_key_creates_a_private_file_and_keeps_the_peer_id(
    tmp_path: Path,
) -> None:
    from libp2p.peer.id import ID

    path = tmp_path / "node.key"
    created = load_or_create_node_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = ID.from_pubkey(created.public_key).to_base58()
    again = load_or_create_node_key(path)
    assert ID.from_pubkey(again.public_key).to_base58() == first
    assert load_or_create_node_key(str(path)).private_key.to_bytes() == (
        created.private_key.to_bytes()
    )
    # The peer id computed without libp2p (invite's) is libp2p's.
    assert node_key_peer_id(path) == first


def test_load_or_create_node_key_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    load_or_create_node_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_node_key(path)
    with pytest.raises(PermissionError):
        node_key_peer_id(path)


def test_load_or_create_node_key_refuses_a_file_that_is_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(ValueError, match="does not hold a libp2p private key"):
        load_or_create_node_key(path)


def test_serve_keeps_its_key_as_load_or_create_node_key_does(node_dir: Path) -> None:
    # The key serve created (NodeDir) is the one load_or_create_node_key loads.
    from libp2p.peer.id import ID

    key = load_or_create_node_key(node_dir / "node.key")
    assert ID.from_pubkey(key.public_key).to_base58() == NodeDir.open(node_dir).peer_id()

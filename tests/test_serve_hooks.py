"""``serve --hooks MODULE:FACTORY`` through the real entry point: custom hooks served with
recovery, maintenance, status, drain and the ready file; bad specs fail with exit 2."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from .clirun import assert_one_line_error, json_of, run_cli, served_node

pytestmark = pytest.mark.libp2p

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": str(ROOT)}


def _trace(data_dir: Path) -> list[str]:
    return (data_dir / "hooks-trace.txt").read_text().splitlines()


def test_serve_runs_a_factorys_served_backend_with_everything_serve_does(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with served_node(
        alice, "--hooks", "tests.served_hooks:node", "--metrics-port", "0", env=ENV
    ) as node:
        ready = json.loads((tmp_path / "alice.ready.json").read_text())
        assert ready["peer_id"] == node.peer_id
        # Recovery ran before serving, and the maintenance started beside the manager.
        assert _trace(alice) == ["factory alice 60.0", "recover", "maintenance"]
        minted = run_cli(
            "invite",
            "--data-dir",
            alice,
            "--role",
            "stock",
            "--identity-requirements",
            '{"name": true}',
            "--json",
        )
        assert minted.returncode == 0, minted.stderr
        dialed = run_cli(
            "dial", json_of(minted)["link"], "--data-dir", bob, "--identity", '{"name": "Bob"}'
        )
        assert dialed.returncode == 0, dialed.stderr
        assert _trace(alice)[-1] == "identity.validate"  # the factory's hook decided
        with urllib.request.urlopen(f"{ready['http']}/status", timeout=10) as response:
            status = json.loads(response.read())
        assert "COMPLETED" in json.dumps(status)
        for probe in ("healthz", "readyz"):
            with urllib.request.urlopen(f"{ready['http']}/{probe}", timeout=10) as response:
                assert response.status == 200, probe
        code, out, err = node.stop()
    assert code == 0, err
    assert "stopped: 1 session finished (COMPLETED 1)" in out
    assert "SIGTERM: draining" in err
    assert _trace(alice)[-1] == "close"
    assert not (tmp_path / "alice.ready.json").exists()


def test_serve_runs_plain_hooks_from_the_config_file_with_the_stores_recovery(
    tmp_path: Path,
) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    (alice / "config.toml").write_text('[node]\nhooks = "tests.served_hooks:plain"\n')
    with served_node(alice, env=ENV) as node:
        minted = run_cli(
            "invite", "--data-dir", alice, "--role", "foil", "--identity-requirements",
            '{"name": true}', "--json",
        )  # fmt: skip
        assert minted.returncode == 0, minted.stderr
        link = json_of(minted)["link"]
        dialed = run_cli("dial", link, "--data-dir", bob, "--identity", '{"name": "Bob"}')
        assert dialed.returncode == 0, dialed.stderr
        assert _trace(alice) == ["identity.validate"]
        # The stock hooks would refuse an identity without "name"; the factory's accept any
        # named one, and refuse this one.
        again = run_cli(
            "invite", "--data-dir", alice, "--role", "foil", "--identity-requirements",
            '{"name": true}', "--json",
        )  # fmt: skip
        refused = run_cli(
            "dial", json_of(again)["link"], "--data-dir", bob, "--identity", '{"nom": "Bob"}'
        )
        assert refused.returncode == 3, refused.stderr
        assert _trace(alice) == ["identity.validate"] * 2
        code, _, err = node.stop()
    assert code == 0, err


def test_the_environment_variable_names_the_factory_too(tmp_path: Path) -> None:
    proc = run_cli(
        "serve",
        "--data-dir",
        tmp_path / "n",
        env={**ENV, "TALEUS_BOOTSTRAP_HOOKS": "tests.served_hooks:wrong_type"},
    )
    assert_one_line_error(proc, 2, "--hooks 'tests.served_hooks:wrong_type': the factory ret")


@pytest.mark.parametrize(
    ("spec", "status", "text"),
    [
        ("no_colon", 2, "--hooks 'no_colon': expected MODULE:FACTORY"),
        ("tests.served_hooks:", 2, "expected MODULE:FACTORY"),
        (
            "no_such_module_here:make",
            2,
            "cannot import module no_such_module_here: ModuleNotFoundError",
        ),
        ("tests.served_hooks:missing", 2, "module tests.served_hooks has no attribute missing"),
        ("tests.served_hooks:NOT_CALLABLE", 2, "NOT_CALLABLE is a str, not a callable factory"),
        (
            "tests.served_hooks:wrong_type",
            2,
            "the factory returned int, not a SessionHooks nor an object whose hooks() returns one",
        ),
        ("tests.served_hooks:wrong_hooks", 2, "the factory returned Bundle.hooks() -> str"),
        ("tests.served_hooks:exploding", 1, "the factory raised RuntimeError: cannot reach"),
    ],
)
def test_a_bad_factory_is_a_clear_error(tmp_path: Path, spec: str, status: int, text: str) -> None:
    proc = run_cli("serve", "--data-dir", tmp_path / "n", "--hooks", spec, env=ENV)
    assert_one_line_error(proc, status, text)
    assert "hunter2" not in proc.stderr
    assert not (tmp_path / "n" / "node.json").exists()  # it never served

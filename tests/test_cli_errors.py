"""Errors a user can cause, through the real entry point: one ``Error:`` line on stderr, a
distinct exit status, never a traceback."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from libp2p.abc import INetStream

from taleus_bootstrap import (
    PROTOCOL_ID,
    BootstrapLink,
    host_multiaddrs,
    new_bootstrap_host,
    running_host,
    set_guarded_stream_handler,
)

from .clirun import MODULE, assert_one_line_error, cli_env, free_port, json_of, run_cli, served_node

pytestmark = pytest.mark.libp2p

PEER = "12D3KooWJhgaFVFJQRfnekiz4Ru1Sp5dSJyRyNZpDRV6BpoBd5bK"


def link_to(addr: str, *, expires_in: timedelta = timedelta(minutes=5)) -> str:
    return BootstrapLink(
        responder_addrs=[addr],
        token="t" * 32,
        expires_at=datetime.now(UTC) + expires_in,
        inviter_role="stock",
    ).encode()


# -- serve -------------------------------------------------------------------------------------


def test_serve_refuses_an_occupied_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_cli(
            "serve", "--data-dir", tmp_path / "a", "--listen", f"/ip4/127.0.0.1/tcp/{port}"
        )
    assert_one_line_error(proc, 1, f"cannot listen on /ip4/127.0.0.1/tcp/{port}")


def test_second_serve_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    with served_node(tmp_path / "a") as node:
        proc = run_cli("serve", "--data-dir", tmp_path / "a")
        assert_one_line_error(proc, 1, "another serve is already running")
        assert f"pid {node.process.pid}" in proc.stderr


PYDANTIC_WORDS = ("Input should", "Tuple should", "List should", "Value error", "Extra inputs")


MULTIADDR = "expected a multiaddr such as /ip4/0.0.0.0/tcp/4001"
SECONDS = "expected a number of seconds > 0 and <= 86400, e.g. 5 or 0.5"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[manager]\nbogus = 1\n", "manager.bogus: unknown key"),
        ("[manager]\nstep_tmeout = 5\n", "unknown key; did you mean 'step_timeout'?"),
        ("[nope]\n", "nope: unknown key; did you mean 'node'?"),
        ("[manager]\npeer_rate = 0\n", "peer_rate: 0 is out of range; expected a whole number"),
        ("[backend]\npool_size = 300\n", "pool_size: 300 is out of range; expected a whole number"
         " >= 1 and <= 256"),
        ("[manager]\nstep_timeout = '5s'\n", f"step_timeout: '5s' is not a number; {SECONDS}"),
        ("[manager]\nstep_timeout = -1\n", f"manager.step_timeout: -1 is out of range; {SECONDS}"),
        ("[manager]\nstep_timeout = 60\nsession_timeout = 30\n", "manager: step_timeout must not"
         " exceed session_timeout"),
        ("[node]\nlisten = ['not a multiaddr']\n", "node.listen[0]: 'not a multiaddr': not a valid"
         f" multiaddr; {MULTIADDR}"),
        ("[node]\nlisten = []\n", f"node.listen: needs at least 1; {MULTIADDR}"),
        ("[node]\nlisten = '/ip4/0.0.0.0/tcp/1'\n", "node.listen: '/ip4/0.0.0.0/tcp/1' is not a"
         ' list; expected a list of multiaddrs such as ["/ip4/0.0.0.0/tcp/4001"]'),
        ("[backend]\ndsn = 5\n", "backend.dsn: not text"),  # a DSN's value is never shown
        ("[backend]\nkind = 'oracle'\n", "backend.kind: 'oracle' is not a known value; expected one"
         " of 'sqlite' or 'postgres'"),
        ("[host\n", "not valid TOML"),
        ("[backend]\nreservation_lease = 10\n", "backend.reservation_lease must exceed"),
    ],
)  # fmt: skip
def test_serve_refuses_a_bad_config_file(tmp_path: Path, config: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    proc = run_cli("serve", "--data-dir", tmp_path / "a", "--config", path)
    assert_one_line_error(proc, 2, message)
    assert f"Error: {path}: " in proc.stderr
    assert not any(words in proc.stderr for words in PYDANTIC_WORDS), proc.stderr


def test_serve_names_the_option_whose_value_is_wrong(tmp_path: Path) -> None:
    one = run_cli("serve", "--data-dir", tmp_path / "a", "--listen", "not-a-multiaddr")
    assert_one_line_error(one, 2, "--listen: 'not-a-multiaddr': not a valid multiaddr")
    assert one.stderr == f"Error: --listen: 'not-a-multiaddr': not a valid multiaddr; {MULTIADDR}\n"
    # Every problem is said, the first on the Error line, no pydantic wording.
    both = run_cli(
        "serve", "--data-dir", tmp_path / "a", "--listen", "/ip4/127.0.0.1/tcp/0",
        "--listen", "nowhere", "--cadre-addr", "somewhere",
    )  # fmt: skip
    assert_one_line_error(both, 2, "--listen: 'nowhere': not a valid multiaddr")
    assert f"\n  --cadre-addr: 'somewhere': not a valid multiaddr; {MULTIADDR}" in both.stderr
    for proc in (one, both):
        assert not any(words in proc.stderr for words in PYDANTIC_WORDS), proc.stderr


def test_serve_config_errors_of_files_and_options(tmp_path: Path) -> None:
    missing = run_cli("serve", "--data-dir", tmp_path / "a", "--config", tmp_path / "none.toml")
    assert_one_line_error(missing, 2, "does not exist")
    bad_listen = run_cli("serve", "--data-dir", tmp_path / "a", "--listen", "127.0.0.1:4001")
    assert_one_line_error(bad_listen, 2, "--listen: '127.0.0.1:4001': not a valid multiaddr")
    no_dsn = run_cli("serve", "--data-dir", tmp_path / "a", "--backend", "postgres")
    assert_one_line_error(no_dsn, 2, "needs a DSN")
    (tmp_path / "file").write_text("")
    not_a_dir = run_cli("serve", "--data-dir", tmp_path / "file")
    assert_one_line_error(not_a_dir, 2, "is a file")


def test_serve_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    with served_node(tmp_path / "a"):
        pass
    (tmp_path / "a" / "node.key").chmod(0o644)
    proc = run_cli("serve", "--data-dir", tmp_path / "a")
    assert_one_line_error(proc, 1, "chmod 600")


def test_postgres_unreachable_is_one_line_without_the_password(tmp_path: Path) -> None:
    dsn = f"postgresql://taleus:s3cret-pw@127.0.0.1:{free_port()}/taleus?connect_timeout=2"
    proc = run_cli(
        "serve",
        "--data-dir",
        tmp_path / "a",
        "--backend",
        "postgres",
        env={"TALEUS_BOOTSTRAP_DSN": dsn},
    )
    assert_one_line_error(proc, 1, "cannot open the PostgreSQL store")
    assert "s3cret-pw" not in proc.stderr + proc.stdout


# -- invite, tokens, audit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["invite", "--role", "stock"],
        ["tokens", "list"],
        ["tokens", "revoke", "0123456789"],
        ["audit", "verify"],
        ["audit", "tail"],
    ],
    ids=" ".join,
)
def test_commands_on_a_missing_data_dir(tmp_path: Path, command: list[str]) -> None:
    proc = run_cli(*command, "--data-dir", tmp_path / "missing")
    assert_one_line_error(proc, 2, "does not exist")
    assert not (tmp_path / "missing").exists()


def test_invite_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    not_node = run_cli("invite", "--data-dir", empty, "--role", "stock")
    assert_one_line_error(not_node, 2, "not a taleus-bootstrap data directory")
    # dial creates bob's directory (key and store), but serve never runs there.
    bob = tmp_path / "bob"
    dialed_dir = run_cli(
        "dial", link_to(f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{PEER}"), "--data-dir", bob
    )
    assert dialed_dir.returncode == 5
    never_served = run_cli("invite", "--data-dir", bob, "--role", "stock")
    assert_one_line_error(never_served, 2, "no recorded addresses")
    for requirements, message in (
        ("{name}", "--identity-requirements: not valid JSON"),
        ("[1]", "--identity-requirements: expected a JSON object"),
    ):
        proc = run_cli(
            "invite", "--data-dir", bob, "--role", "stock", "--addr", "/ip4/127.0.0.1/tcp/1",
            "--identity-requirements", requirements,
        )  # fmt: skip
        assert_one_line_error(proc, 2, message)
    both = run_cli("invite", "--data-dir", bob, "--role", "stock", "--uses", "2", "--unlimited")
    assert_one_line_error(both, 2, "exclude each other")
    no_role = run_cli("invite", "--data-dir", bob)
    assert_one_line_error(no_role, 2, "Missing option '--role'")
    bad_role = run_cli("invite", "--data-dir", bob, "--role", "banker")
    assert_one_line_error(bad_role, 2, "'banker' is not one of")
    bad_addr = run_cli("invite", "--data-dir", bob, "--role", "stock", "--addr", "nowhere")
    assert_one_line_error(bad_addr, 2, "not a multiaddr")
    addrs = [part for i in range(1, 10) for part in ("--addr", f"/ip4/127.0.0.1/tcp/{i}")]
    too_many = run_cli("invite", "--data-dir", bob, "--role", "stock", *addrs)
    assert_one_line_error(too_many, 2, "--addr: 9 given, at most 8 allowed")
    listed = run_cli("tokens", "list", "--data-dir", bob, "--json")
    assert json_of(listed) == []  # nothing was minted by any refused invite


# -- dial --------------------------------------------------------------------------------------


def test_dial_refuses_bad_and_expired_links(tmp_path: Path) -> None:
    bad = run_cli("dial", "taleus:bootstrap:not-base64!", "--data-dir", tmp_path / "b")
    assert_one_line_error(bad, 2, "link")
    other = run_cli("dial", "https://example.com/", "--data-dir", tmp_path / "b", "--json")
    assert_one_line_error(other, 2, "link")
    assert json_of(other)["error"] == "bad_link"
    expired = link_to(f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", expires_in=timedelta(seconds=-1))
    proc = run_cli("dial", expired, "--data-dir", tmp_path / "b", "--json")
    assert_one_line_error(proc, 2, "the link has expired")
    assert json_of(proc)["error"] == "link_expired"
    bad_identity = run_cli("dial", expired, "--data-dir", tmp_path / "b", "--identity", "7")
    assert_one_line_error(bad_identity, 2, "--identity: expected a JSON object")


def test_dial_unreachable_inviter(tmp_path: Path) -> None:
    addr = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{PEER}"
    proc = run_cli("dial", link_to(addr), "--data-dir", tmp_path / "b", "--json")
    assert_one_line_error(proc, 5, "could not reach the inviter at 1 address")
    report = json_of(proc)
    assert report["error"] == "unreachable"
    # The default two attempts at the address are one entry, the address named once.
    assert report["attempts"] == [
        {
            "addr": addr,
            "cause": "connection refused (nothing listens there: is the node running?)",
            "tries": 2,
        }
    ]
    assert proc.stdout.count(addr) == 1
    text = run_cli("dial", link_to(addr), "--data-dir", tmp_path / "b")
    assert text.stderr == (
        "Error: could not reach the inviter at 1 address:\n"
        f"  {addr}: connection refused (nothing listens there: is the node running?)"
        " (2 attempts)\n"
    )


def test_dial_names_the_cause_at_each_address(tmp_path: Path) -> None:
    """A closed port (refused), a node whose peer id is not the link's (wrong peer id) and a
    socket that accepts but never speaks (timed out): one line each, no library log line."""
    config = tmp_path / "dial.toml"
    config.write_text("[invitee]\ndial_timeout = 3\ndial_attempts = 1\n")
    closed = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{PEER}"
    with socket.socket() as silent, served_node(tmp_path / "a") as node:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the connection; nobody answers on it
        mute = f"/ip4/127.0.0.1/tcp/{silent.getsockname()[1]}/p2p/{PEER}"
        other = node.addrs[0].rsplit("/p2p/", 1)[0] + f"/p2p/{PEER}"
        link = BootstrapLink(
            responder_addrs=[closed, other, mute],
            token="t" * 32,
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
            inviter_role="stock",
        ).encode()
        text = run_cli("dial", link, "--data-dir", tmp_path / "b", "--config", config)
        as_json = run_cli("dial", link, "--data-dir", tmp_path / "b", "--config", config, "--json")
    causes = {
        closed: "connection refused (nothing listens there: is the node running?)",
        other: "wrong peer id (the link's peer id does not match the node there: the node"
        f" there is {node.peer_id})",
        mute: "timed out after 3 s",
    }
    assert_one_line_error(text, 5, "could not reach the inviter at any of 3 addresses:")
    assert text.stderr.splitlines()[1:] == [f"  {addr}: {cause}" for addr, cause in causes.items()]
    assert "libp2p" not in text.stderr and "Traceback" not in text.stderr
    assert_one_line_error(as_json, 5, "could not reach the inviter at any of 3 addresses:")
    report = json_of(as_json)
    assert report["detail"] == "could not reach the inviter at any of 3 addresses"
    assert report["attempts"] == [
        {"addr": addr, "cause": cause, "tries": 1} for addr, cause in causes.items()
    ]
    assert "libp2p" not in as_json.stderr


def test_dial_says_which_identity_claims_the_link_requires(tmp_path: Path) -> None:
    with served_node(tmp_path / "a"):
        minted = run_cli(
            "invite", "--data-dir", tmp_path / "a", "--role", "stock", "--uses", "3",
            "--identity-requirements", '{"email": true, "name": true}',
        )  # fmt: skip
        assert minted.returncode == 0, minted.stderr
        link = minted.stdout.strip()
        bare = run_cli("dial", link, "--data-dir", tmp_path / "b")
        as_json = run_cli("dial", link, "--data-dir", tmp_path / "b", "--json")
        partial = run_cli("dial", link, "--data-dir", tmp_path / "b", "--identity", '{"name": "B"}')
    assert_one_line_error(
        bare,
        3,
        "identity_rejected; the link requires identity claims email, name"
        ' ({"email": true, "name": true}) and none were given: pass them with'
        """ --identity '{"email": "...", "name": "..."}'""",
    )
    assert_one_line_error(as_json, 3, "the link requires identity claims email, name")
    report = json_of(as_json)
    assert (report["code"], report["identity_requirements"]) == (
        "identity_rejected",
        {"email": True, "name": True},
    )
    assert_one_line_error(partial, 3, "--identity lacks email")


async def dial_against(
    handler: Callable[[INetStream], Awaitable[None]], tmp_path: Path, *extra: str
) -> trio.CompletedProcess[bytes]:
    """Run ``dial`` (a subprocess) against an in-process host serving ``handler``."""
    host = new_bootstrap_host()
    set_guarded_stream_handler(host, PROTOCOL_ID, handler)
    async with running_host(host):
        link = link_to(host_multiaddrs(host)[0])
        return await trio.run_process(
            [*MODULE, "dial", link, "--data-dir", str(tmp_path / "b"), *extra],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=cli_env(),
        )


def completed(proc: trio.CompletedProcess[bytes]) -> object:
    import subprocess

    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


async def test_dial_times_out_against_a_silent_inviter(tmp_path: Path) -> None:
    async def silent(stream: INetStream) -> None:
        await trio.sleep_forever()

    config = tmp_path / "fast.toml"
    config.write_text(
        "[invitee]\nstep_timeout = 0.5\nprovision_timeout = 0.5\nsession_timeout = 2\n"
    )
    proc = await dial_against(silent, tmp_path, "--config", str(config))
    assert_one_line_error(completed(proc), 4, "timed out")  # type: ignore[arg-type]


async def test_dial_reports_a_protocol_error(tmp_path: Path) -> None:
    async def garbage(stream: INetStream) -> None:
        await stream.write(b"\xff\xff\xff\xff\xff\xff")
        await trio.sleep(2)

    proc = await dial_against(garbage, tmp_path, "--json")
    assert_one_line_error(completed(proc), 6, "protocol error")  # type: ignore[arg-type]
    assert json_of(completed(proc))["code"] == "malformed"  # type: ignore[arg-type]


def test_unknown_command_and_option_are_usage_errors() -> None:
    assert_one_line_error(run_cli("launch"), 2, "No such command 'launch'")
    assert_one_line_error(run_cli("demo", "--fast"), 2, "No such option '--fast'")


def test_serve_refuses_a_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_cli("serve", "--data-dir", tmp_path / "a", "--metrics-port", str(port))
    assert_one_line_error(proc, 1, f"cannot serve metrics on 127.0.0.1:{port}")

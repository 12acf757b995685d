"""The ``taleus-bootstrap`` command line through its real entry points, in subprocesses."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
from pathlib import Path

import pytest

from taleus_bootstrap import BootstrapLink, token_digest
from taleus_bootstrap._logsetup import LEVELS_ENV

from .clirun import SCRIPT, assert_one_line_error, json_of, run_cli, served_node

pytestmark = pytest.mark.libp2p

COMMANDS = [
    [],
    ["serve"],
    ["invite"],
    ["dial"],
    ["resolve"],
    ["demo"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "head"],
    ["audit", "tail"],
    ["tokens"],
    ["tokens", "list"],
    ["tokens", "revoke"],
    ["loadtest"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command: list[str]) -> None:
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: taleus-bootstrap")
    assert "--help" in proc.stdout


def test_console_script_is_installed() -> None:
    import subprocess

    proc = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("taleus-bootstrap, version ")


def test_demo_runs_both_roles_and_a_refused_replay() -> None:
    proc = run_cli("demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("COMPLETED in") == 2
    assert "refused as expected: invalid_token" in out
    assert "A's audit chain verified: 26 events, intact" in out
    assert "B's audit chain verified" in out
    assert proc.stderr == ""  # the expected refusal is shown on stdout, not logged


def test_serve_invite_dial_both_roles_replay_and_graceful_stop(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with served_node(alice) as node:
        assert node.addrs[0].startswith("/ip4/127.0.0.1/tcp/")
        assert node.addrs[0].endswith(f"/p2p/{node.peer_id}")
        results = {}
        links = {}
        for role in ("stock", "foil"):
            minted = run_cli("invite", "--data-dir", alice, "--role", role, "--json")
            assert minted.returncode == 0, minted.stderr
            info = json_of(minted)
            link = BootstrapLink.decode(info["link"])
            assert link.inviter_role == role and link.responder_addrs == node.addrs
            assert info["token_digest"] == token_digest(link.token)
            links[role] = info["link"]
            dialed = run_cli("dial", info["link"], "--data-dir", bob, "--json")
            assert dialed.returncode == 0, dialed.stderr
            results[role] = json_of(dialed)
        assert results["stock"]["provisioned_by"] == "inviter"
        assert results["stock"]["invitee_role"] == "foil"
        assert results["foil"]["provisioned_by"] == "invitee"
        # Bob's data dir keeps his key: the same peer id in both tallies.
        assert results["foil"]["stock_party_id"] == results["stock"]["foil_party_id"]
        assert results["stock"]["stock_party_id"] == node.peer_id
        for result in results.values():
            assert Path(result["database"]["endpoint"]).is_file()
            assert result["confirmed"] is True  # both sides recorded it (protocol section 10)

        replay = run_cli("dial", links["stock"], "--data-dir", bob, "--json")
        assert replay.returncode == 3
        assert json_of(replay)["code"] == "invalid_token"
        assert "Error: inviter rejected the bootstrap: invalid_token" in replay.stderr

        listed = run_cli("tokens", "list", "--data-dir", alice, "--json")
        assert listed.returncode == 0, listed.stderr
        assert [(t["inviter_role"], t["used"], t["status"]) for t in json_of(listed)] == [
            ("stock", 1, "used up"),
            ("foil", 1, "used up"),
        ]
        status, out, err = node.stop()
    assert status == 0, err
    assert "stopped: 3 sessions finished (COMPLETED 2, FAILED 1)" in out
    assert "SIGTERM: draining" in err
    assert not (tmp_path / "alice.ready.json").exists()
    for text in links.values():  # no secret in the node's output or logs
        token = BootstrapLink.decode(text).token
        assert token not in out and token not in err


def test_human_output_of_invite_dial_and_tokens(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with served_node(alice, "--cadre-addr", "/dns4/alice.example/tcp/7000"):
        minted = run_cli(
            "invite",
            "--data-dir",
            alice,
            "--role",
            "foil",
            "--uses",
            "3",
            "--label",
            "shop",
            "--identity-requirements",
            '{"name": true}',
            "--qr",
        )
        assert minted.returncode == 0, minted.stderr
        link_line, qr = minted.stdout.split("\n", 1)
        assert link_line.startswith("taleus:bootstrap:")
        assert "█" in qr or "▀" in qr  # a terminal QR code follows the link
        missing_identity = run_cli("dial", link_line, "--data-dir", bob)
        assert_one_line_error(missing_identity, 3, "identity_rejected")
        dialed = run_cli("dial", link_line, "--data-dir", bob, "--identity", '{"name": "Bob"}')
        assert dialed.returncode == 0, dialed.stderr
        assert "formed" in dialed.stdout and "your role" in dialed.stdout
        assert "/dns4/alice.example/tcp/7000" in dialed.stdout
        listed = run_cli("tokens", "list", "--data-dir", alice)
        assert listed.returncode == 0
        assert "shop" in listed.stdout and "1/3" in listed.stdout and "active" in listed.stdout


def test_dial_refuses_a_link_of_its_own_data_dir(tmp_path: Path) -> None:
    """``dial "$(invite --data-dir alice --role foil)" --data-dir alice`` formed a tally with
    stock_party_id == foil_party_id; now it says why it refuses, and the token stays usable."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with served_node(alice) as node:
        minted = run_cli("invite", "--data-dir", alice, "--role", "foil")
        assert minted.returncode == 0, minted.stderr
        link = minted.stdout.strip()
        own = run_cli("dial", link, "--data-dir", alice)
        assert_one_line_error(own, 2, "a node cannot form a tally with itself")
        assert node.peer_id in own.stderr and "--data-dir" in own.stderr
        by_env = run_cli("dial", link, "--json", env={"TALEUS_BOOTSTRAP_DATA_DIR": str(alice)})
        assert_one_line_error(by_env, 2, "a node cannot form a tally with itself")
        assert {k: json_of(by_env)[k] for k in ("ok", "code", "error")} == {
            "ok": False,
            "code": "identity_rejected",
            "error": "own_link",
        }
        dialed = run_cli("dial", link, "--data-dir", bob, "--json")  # the token is still good
        assert dialed.returncode == 0, dialed.stderr
        result = json_of(dialed)
        assert result["stock_party_id"] != result["foil_party_id"] == node.peer_id
        status, out, err = node.stop()
    assert status == 0, err
    assert "stopped: 1 session finished (COMPLETED 1)" in out


def test_peer_id_is_stable_across_restarts_and_invite_warns_when_stopped(tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    with served_node(alice) as first:
        pass
    key = alice / "node.key"
    assert key.stat().st_mode & 0o777 == 0o600
    with served_node(alice) as second:
        assert second.peer_id == first.peer_id
        second_addrs = second.addrs
    minted = run_cli("invite", "--data-dir", alice, "--role", "stock")
    assert minted.returncode == 0, minted.stderr
    assert "warning: serve is not running" in minted.stderr
    assert BootstrapLink.decode(minted.stdout.strip()).responder_addrs == second_addrs


def test_invite_with_explicit_addresses(tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    with served_node(alice) as node:
        pass
    minted = run_cli(
        "invite", "--data-dir", alice, "--role", "stock", "--addr", "/dns4/alice.example/tcp/4001"
    )
    assert minted.returncode == 0, minted.stderr
    link = BootstrapLink.decode(minted.stdout.strip())
    assert link.responder_addrs == [f"/dns4/alice.example/tcp/4001/p2p/{node.peer_id}"]
    wrong = run_cli(
        "invite",
        "--data-dir",
        alice,
        "--role",
        "stock",
        "--addr",
        "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWJhgaFVFJQRfnekiz4Ru1Sp5dSJyRyNZpDRV6BpoBd5bK",
    )
    assert_one_line_error(wrong, 2, "names peer")


def test_tokens_revoke_by_prefix_and_by_link(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with served_node(alice):
        first = json_of(run_cli("invite", "--data-dir", alice, "--role", "stock", "--json"))
        second = json_of(run_cli("invite", "--data-dir", alice, "--role", "foil", "--json"))
        revoked = run_cli("tokens", "revoke", first["token_digest"][:10], "--data-dir", alice)
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.strip() == f"revoked {first['token_digest']}"
        by_link = run_cli("tokens", "revoke", "--link", second["link"], "--data-dir", alice)
        assert by_link.returncode == 0, by_link.stderr
        for minted in (first, second):
            refused = run_cli("dial", minted["link"], "--data-dir", bob)
            assert_one_line_error(refused, 3, "invalid_token")
        listed = json_of(run_cli("tokens", "list", "--data-dir", alice, "--json"))
        assert [t["status"] for t in listed] == ["revoked", "revoked"]
    unknown = run_cli("tokens", "revoke", "ffffffffffff", "--data-dir", alice)
    assert_one_line_error(unknown, 1, "no token with a digest starting ffffffffffff")
    short = run_cli("tokens", "revoke", "abc", "--data-dir", alice)
    assert_one_line_error(short, 2, "at least 8 hexadecimal characters")
    neither = run_cli("tokens", "revoke", "--data-dir", alice)
    assert_one_line_error(neither, 2, "either a DIGEST or --link")


def test_audit_tail_and_verify_then_tamper(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with served_node(alice):
        link = run_cli("invite", "--data-dir", alice, "--role", "stock").stdout.strip()
        session_id = json_of(run_cli("dial", link, "--data-dir", bob, "--json"))["session_id"]
    verified = run_cli("audit", "verify", "--data-dir", alice, "--json")
    assert verified.returncode == 0, verified.stderr
    report = json_of(verified)
    assert report["ok"] is True and report["events"] == 9 and len(report["head_hash"]) == 64

    tail = run_cli("audit", "tail", "--data-dir", alice, "-n", "3", "--json")
    rows = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [r["seq"] for r in rows] == [7, 8, 9]
    assert rows[-1]["event"]["kind"] == "session_outcome"
    one_session = run_cli("audit", "tail", "--data-dir", alice, "--session", session_id)
    assert one_session.returncode == 0
    assert "session_started" in one_session.stdout and "COMPLETED" in one_session.stdout
    assert BootstrapLink.decode(link).token not in one_session.stdout
    assert_one_line_error(
        run_cli("audit", "tail", "--data-dir", alice, "--session", "nope"), 1, "no events"
    )

    # Someone with write access to the file drops the append-only trigger and edits a row.
    with sqlite3.connect(alice / "audit.sqlite") as conn:
        conn.execute("DROP TRIGGER audit_log_no_update")
        conn.execute(
            "UPDATE audit_log SET event = replace(event, 'COMPLETED', 'FAILED') WHERE seq = 9"
        )
    broken = run_cli("audit", "verify", "--data-dir", alice)
    assert_one_line_error(broken, 1, "audit chain broken at seq 9")


def test_postgres_backend_serve_invite_dial(tmp_path: Path, pg_dsn: str) -> None:
    from .pgserver import drop_schema, fresh_schema

    schema = fresh_schema()
    env = {"TALEUS_BOOTSTRAP_DSN": pg_dsn}
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    config = tmp_path / "pg.toml"
    config.write_text(f'[backend]\nkind = "postgres"\nschema_name = "{schema}"\n')
    try:
        with served_node(alice, "--config", config, env=env):
            state = json.loads((alice / "node.json").read_text())
            assert (state["backend"], state["schema_name"]) == ("postgres", schema)
            assert pg_dsn not in json.dumps(state)
            # The tally passwords' key is the data directory's own, kept private.
            key_mode = (alice / "pg-credentials.key").stat().st_mode
            assert stat.S_IMODE(key_mode) == 0o600
            # invite needs neither the config file nor --backend: node.json names the kind and
            # the schema; the DSN comes from the environment.
            minted = run_cli("invite", "--data-dir", alice, "--role", "stock", env=env)
            assert minted.returncode == 0, minted.stderr
            dialed = run_cli("dial", minted.stdout.strip(), "--data-dir", bob, "--json")
            assert dialed.returncode == 0, dialed.stderr
            assert json_of(dialed)["database"]["endpoint"].startswith("postgresql://")
            listed = run_cli("tokens", "list", "--data-dir", alice, "--json", env=env)
            assert [t["used"] for t in json_of(listed)] == [1]
        # A restart with options but without the config file stays on PostgreSQL (node.json).
        with served_node(alice, "--listen", "/ip4/127.0.0.1/tcp/0", env=env):
            state = json.loads((alice / "node.json").read_text())
            assert (state["backend"], state["schema_name"]) == ("postgres", schema)
            assert not (alice / "control.sqlite").exists()
        no_dsn = run_cli("tokens", "list", "--data-dir", alice)
        assert_one_line_error(no_dsn, 2, "needs a DSN")
        sqlite_instead = run_cli("tokens", "list", "--data-dir", alice, "--backend", "sqlite")
        assert_one_line_error(sqlite_instead, 2, "last served with the postgres backend")
        (alice / "pg-credentials.key").chmod(0o644)
        open_key = run_cli("tokens", "list", "--data-dir", alice, env=env)
        assert_one_line_error(open_key, 1, "pg-credentials.key is accessible to other users")
    finally:
        drop_schema(pg_dsn, schema)


def _get(url: str) -> tuple[int, str, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, "", ""


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_serve_exposes_metrics_and_status_and_logs_json(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    with served_node(alice, "--metrics-port", "0", "--log-format", "json") as node:
        info = json.loads((tmp_path / "alice.ready.json").read_text())
        base = info["http"]
        assert base.startswith("http://127.0.0.1:")
        link = run_cli("invite", "--data-dir", alice, "--role", "stock").stdout.strip()
        assert run_cli("dial", link, "--data-dir", bob).returncode == 0
        assert run_cli("dial", link, "--data-dir", bob).returncode == 3  # a replay

        status, content_type, text = _get(f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        text_metrics = text
        finished = "taleus_bootstrap_session_finished_total"
        assert _metric(text, finished, taleus_side="inviter", taleus_outcome="completed") == 1
        assert _metric(text, finished, taleus_outcome="failed") == 1
        rejections = "taleus_bootstrap_session_rejections_total"
        assert _metric(text, rejections, taleus_rejection_code="invalid_token") == 1
        assert _metric(text, "taleus_bootstrap_session_duration_seconds_count") == 2
        assert _metric(text, "taleus_bootstrap_session_active") == 0
        assert _metric(text, "taleus_bootstrap_hook_duration_seconds_count",
                       taleus_hook="token.validate") == 2  # fmt: skip
        assert _metric(text, "taleus_bootstrap_ratelimit_tracked_peers") == 1
        assert "taleus_bootstrap_audit_queue_depth" in text
        assert _metric(text, "taleus_bootstrap_audit_write_duration_seconds_count") == 2
        assert node.peer_id not in text  # not even our own: the instance id is a digest
        from taleus_bootstrap._telemetry import METRICS

        from .test_docs import load_gen_docs

        prometheus_names = load_gen_docs().prometheus_names
        for name, (kind, unit, _, _) in METRICS.items():  # every series docs/operations.md lists
            for series in prometheus_names(name, kind, unit):
                assert f"\n{series}{{" in text, series

        status, content_type, text = _get(f"{base}/status")
        assert status == 200 and content_type == "application/json"
        document = json.loads(text)
        assert document["peer_id"] == node.peer_id
        assert document["statistics"]["by_state"] == {"COMPLETED": 1, "FAILED": 1}
        completed, replay = document["recent_sessions"][1], document["recent_sessions"][0]
        assert completed["final_state"] == "COMPLETED" and completed["tally_id"].startswith("tly_")
        assert [t["to"] for t in completed["transitions"]][-2:] == ["AWAITING_ACK", "COMPLETED"]
        assert replay["code"] == "invalid_token" and replay["detail"]
        assert document["statistics"]["store_breaker"] == "closed"
        status, content_type, text = _get(f"{base}/readyz")
        assert status == 200 and json.loads(text)["ready"] is True
        assert _metric(text_metrics, "taleus_bootstrap_store_breaker_open") == 0
        assert _get(f"{base}/nothing")[0] == 404
        _, _out, err = node.stop()
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    warning = next(line for line in lines if line["level"] == "WARNING")
    assert "code=invalid_token" in warning["message"] and "peer=" in warning["message"]
    assert BootstrapLink.decode(link).token not in err


def test_serve_exports_traces_and_metrics_over_otlp(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    try:
        with served_node(alice, "--otlp-endpoint", endpoint) as node:
            link = run_cli("invite", "--data-dir", alice, "--role", "foil").stdout.strip()
            assert run_cli("dial", link, "--data-dir", bob).returncode == 0
            status, _, err = node.stop()  # shutting down flushes both exporters
        assert status == 0, err
    finally:
        collector.shutdown()
    traces = b"".join(body for path, body in received if path == "/v1/traces")
    exported_metrics = b"".join(body for path, body in received if path == "/v1/metrics")
    assert b"taleus.bootstrap.session" in traces and b"hook database.accept" in traces
    assert b"taleus.bootstrap.session.finished" in exported_metrics


RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_log_lines_have_rfc3339_times_and_quiet_libraries(tmp_path: Path) -> None:
    """JSON and text log lines: RFC 3339 UTC times with milliseconds; at --log-level debug no
    line of multiaddr (which logs every parse) or libp2p, unless TALEUS_BOOTSTRAP_LOG_LEVELS
    asks for them."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    loggers: dict[str, set[str]] = {}
    for name, env in (("default", None), ("asked", {LEVELS_ENV: "multiaddr=debug"})):
        args = ("--log-format", "json", "--log-level", "debug")
        with served_node(alice, *args, env=env) as node:
            link = run_cli("invite", "--data-dir", alice, "--role", "stock").stdout.strip()
            assert run_cli("dial", link, "--data-dir", bob).returncode == 0
            _, _, err = node.stop()
        lines = [json.loads(line) for line in err.splitlines()]
        assert lines and all(RFC3339_MS.match(line["time"]) for line in lines), err
        loggers[name] = {line["logger"].split(".")[0] for line in lines}
    assert loggers["default"] == {"taleus_bootstrap"}
    assert "multiaddr" in loggers["asked"]
    with served_node(alice) as node:
        _, _, err = node.stop()
    first = err.splitlines()[0]
    assert RFC3339_MS.match(first.split(" ", 1)[0]), first
    assert first.split(" ")[1:3] == ["INFO", "taleus_bootstrap.cli:"], first


def test_piped_output_is_neither_wrapped_nor_truncated(tmp_path: Path) -> None:
    """Piped (not a terminal): a warning on one line however long, a table as wide as its
    content, and counts in the right number."""
    alice = tmp_path / "alice-with-a-rather-long-data-directory-name-for-the-warning"
    with served_node(alice):
        pass
    label = "shop-" * 40
    minted = run_cli("invite", "--data-dir", alice, "--role", "stock", "--label", label)
    assert minted.returncode == 0, minted.stderr
    warning = f"warning: serve is not running on {alice}; the link uses the addresses of its last"
    assert f"{warning} start\n" in minted.stderr
    listed = run_cli("tokens", "list", "--data-dir", alice)
    assert listed.returncode == 0, listed.stderr
    assert f"1 token in {alice}" in listed.stdout
    header = next(line for line in listed.stdout.splitlines() if "digest" in line)
    assert [h.strip() for h in header.strip("┃").split("┃")] == [
        "digest", "role", "status", "used", "in flight", "expires", "label",
    ]  # fmt: skip
    assert any(label in line for line in listed.stdout.splitlines()), listed.stdout
    assert "…" not in listed.stdout

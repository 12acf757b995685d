"""``taleus-bootstrap loadtest`` through its real entry point: a smoke run of 100 sessions."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .clirun import MODULE, assert_one_line_error, cli_env, run_cli, served_node

pytestmark = pytest.mark.libp2p


def test_loadtest_smoke_with_baseline_and_json(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = run_cli(
        "loadtest", "--spawn", "--sessions", "100", "--concurrency", "10", "--peers", "4",
        "--processes", "2", "--baseline", "--repeat", "2", "--json", out, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ours / baseline throughput:" in proc.stdout
    assert "the median pair of" in proc.stdout
    report = json.loads(out.read_text())
    assert report["shape"]["processes"] == 2 and report["shape"]["peers"] == 4
    for name in ("ours", "baseline"):
        run = report["runs"][name]
        assert run["outcomes"] == {"completed": 100}, run
        assert run["server_by_state"] == {"COMPLETED": 100} or name == "baseline"
        assert run["sessions_per_s"] > 0
        lat = run["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert run["server"]["cpu_ms_per_session"] > 0 and run["server"]["peak_rss_mib"] > 10
    assert report["runs"]["baseline"]["server_by_state"] == {"COMPLETED": 100, "FAILED": 0}
    assert report["ratio"] == pytest.approx(
        report["runs"]["ours"]["sessions_per_s"] / report["runs"]["baseline"]["sessions_per_s"]
    )
    assert len(report["ratios"]) == 2 and report["ratio"] in report["ratios"]


def test_loadtest_js_baseline_without_node_skips_the_row_with_a_note(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = run_cli(
        "loadtest", "--spawn", "--sessions", "20", "--concurrency", "4", "--peers", "2",
        "--processes", "1", "--baseline", "--js-baseline", "--json", out,
        env={"PATH": str(tmp_path)}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "note: skipping the js-libp2p row: Node.js is not installed" in proc.stderr
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"ours", "baseline"} and "cpu_per_js" not in report


def test_loadtest_against_a_served_data_dir_counts_rejections(tmp_path: Path) -> None:
    config = tmp_path / "tight.toml"
    config.write_text("[manager]\nmax_concurrent_sessions = 2\n")
    with served_node(tmp_path / "a", "--config", config):
        out = tmp_path / "figures.json"
        proc = run_cli(
            "loadtest", "--target", tmp_path / "a", "--sessions", "40", "--concurrency", "20",
            "--json", out, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads(out.read_text())["runs"]["target"]
    assert sum(run["outcomes"].values()) == 40  # every session classified
    assert set(run["outcomes"]) <= {"completed", "rejected:busy", "rejected:rate_limited"}
    assert (
        run["outcomes"].get("rejected:busy", 0) + run["outcomes"].get("rejected:rate_limited", 0)
        > 0
    )  # the node's cap and its default per-peer rate refuse part of the burst


def test_loadtest_usage_errors(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("loadtest"), 2, "exactly one of --spawn and --target")
    both = run_cli("loadtest", "--spawn", "--target", "taleus:bootstrap:x")
    assert_one_line_error(both, 2, "exactly one of --spawn and --target")
    baseline = run_cli("loadtest", "--target", "taleus:bootstrap:x", "--baseline")
    assert_one_line_error(baseline, 2, "--baseline needs --spawn")
    repeat = run_cli("loadtest", "--spawn", "--repeat", "3")
    assert_one_line_error(repeat, 2, "--repeat needs --baseline")
    js = run_cli("loadtest", "--spawn", "--js-baseline")
    assert_one_line_error(js, 2, "--js-baseline needs --baseline")
    prepared = run_cli("loadtest", "--spawn", "--prepared", "8")  # the memory backend
    assert_one_line_error(prepared, 2, "--prepared needs --spawn and --backend postgres")
    missing = run_cli("loadtest", "--target", tmp_path / "nothing")
    assert_one_line_error(missing, 2, "does not exist")


def test_loadtest_idle_streams_are_reaped_while_sessions_complete(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = run_cli(
        "loadtest", "--spawn", "--backend", "ephemeral", "--sessions", "30", "--concurrency", "3",
        "--idle-streams", "30", "--json", out, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads(out.read_text())["runs"]["ours"]
    assert run["outcomes"] == {"completed": 30}
    idle = run["idle"]
    assert idle["idle_opened"] == idle["idle_reaped"] == 30  # the server ended every one
    # By the 5 s step timeout (plus the 1 s rejection linger), far from the client's 30 s.
    assert 0 < idle["reap_s"]["p50"] <= idle["reap_s"]["max"] < 10
    assert "server_rss_extra_mib" in idle


def test_a_spawned_node_runs_what_serve_runs_by_default_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = run_cli(
        "loadtest", "--spawn", "--sessions", "20", "--concurrency", "4", "--json", out,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sqlite backend" in proc.stdout
    report = json.loads(out.read_text())
    assert report["shape"]["backend"] == "sqlite"
    run = report["runs"]["ours"]
    assert run["outcomes"] == {"completed": 20}
    assert run["server_audit_rows"] >= 20  # a durable audit log: the SQLite store ran
    usage = run_cli("loadtest", "--target", "taleus:bootstrap:x", "--backend", "memory")
    assert_one_line_error(usage, 2, "--backend needs --spawn")


def _loadtest_tokens(data_dir: Path) -> list[dict[str, object]]:
    listed = run_cli("tokens", "list", "--data-dir", data_dir, "--json")
    assert listed.returncode == 0, listed.stderr
    return [t for t in json.loads(listed.stdout) if t["label"] == "loadtest"]


def test_a_target_run_against_a_default_node_explains_rate_limits_and_revokes_its_token(
    tmp_path: Path,
) -> None:
    with served_node(tmp_path / "a"):
        out = tmp_path / "figures.json"
        proc = run_cli(
            "loadtest", "--target", tmp_path / "a", "--sessions", "60", "--concurrency", "10",
            "--json", out, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        report = json.loads(out.read_text())
        outcomes = report["runs"]["target"]["outcomes"]
        assert outcomes.get("rejected:rate_limited", 0) > 30, outcomes
        assert report["shape"]["backend"] == "sqlite"
        # The hint names the node's own settings and the client-side knob.
        assert "were refused rate_limited" in proc.stderr
        assert "peer_rate = " in proc.stderr and "peer_burst = " in proc.stderr
        assert "--peers" in proc.stderr
        [token] = _loadtest_tokens(tmp_path / "a")
        assert token["status"] == "revoked"
        assert "revoked the load test's token" in proc.stderr


def test_a_target_run_stopped_with_ctrl_c_revokes_its_token(tmp_path: Path) -> None:
    config = tmp_path / "open.toml"
    config.write_text("[manager]\npeer_rate = 1000000\npeer_burst = 1000000\n")
    with served_node(tmp_path / "a", "--config", config):
        loadtest = subprocess.Popen(
            [*MODULE, "loadtest", "--target", str(tmp_path / "a"), "--sessions", "100000",
             "--concurrency", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not any(t["used"] for t in _loadtest_tokens(tmp_path / "a")):
                assert time.monotonic() < deadline and loadtest.poll() is None
                time.sleep(0.5)  # until bootstraps are under way
            loadtest.send_signal(signal.SIGINT)
            _, err = loadtest.communicate(timeout=60)
        finally:
            if loadtest.poll() is None:
                loadtest.kill()
        assert loadtest.returncode != 0  # interrupted, not finished
        [token] = _loadtest_tokens(tmp_path / "a")
        assert token["status"] == "revoked", err


def test_loadtest_logs_in_the_format_of_serve(tmp_path: Path) -> None:
    """The spawned node's log lines reach loadtest's stderr in serve's text format (RFC 3339
    time, level, logger), here its session lines, asked for by TALEUS_BOOTSTRAP_LOG_LEVELS."""
    proc = run_cli(
        "loadtest", "--spawn", "--sessions", "2", "--concurrency", "1",
        env={"TALEUS_BOOTSTRAP_LOG_LEVELS": "taleus_bootstrap=info"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    line_format = re.compile(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) [\w.]+: "
    )
    assert lines and all(line_format.match(line) for line in lines), proc.stderr
    assert any(" INFO taleus_bootstrap.manager: " in line for line in lines), proc.stderr

"""The documentation site: generated pages are current, and ``mkdocs build --strict`` passes.

``docs/gen_docs.py`` writes ``docs/state-machine.md`` from the transition tables; a table change
without a regenerated page fails :func:`test_generated_docs_are_current`.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from taleus_bootstrap import INVITEE_TRANSITIONS, INVITER_TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GEN_DOCS = DOCS / "gen_docs.py"
PAGES = ("index", "protocol", "state-machine", "hooks", "operations", "performance", "security")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def load_gen_docs() -> ModuleType:
    """``docs/gen_docs.py`` as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_docs", GEN_DOCS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen_docs() -> ModuleType:
    return load_gen_docs()


def test_generated_docs_are_current() -> None:
    completed = run("docs/gen_docs.py", "--check")
    assert completed.returncode == 0, completed.stderr[-5000:]


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    site = tmp_path / "site"
    completed = run("-m", "mkdocs", "build", "--strict", "-d", str(site))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    assert "WARNING" not in completed.stderr, completed.stderr[-5000:]
    assert (site / "index.html").is_file()
    for page in PAGES[1:]:
        assert (site / page / "index.html").is_file(), f"{page} was not built"
    assert "stateDiagram-v2" in (site / "state-machine" / "index.html").read_text(encoding="utf-8")
    assert not list(site.rglob("*.py")), "the generator script was published"


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("__pycache__"))
    page = docs / "state-machine.md"
    original = page.read_text(encoding="utf-8")
    line = "    CREATED --> TIMEOUT : timed_out\n"
    assert original.count(line) == 1
    page.write_text(
        original.replace(line, line.replace("timed_out", "timed-out")), encoding="utf-8"
    )

    stale = run("docs/gen_docs.py", "--check", "--docs-dir", str(docs))
    assert stale.returncode == 1, stale.stderr
    assert f"--- {page} (on disk)" in stale.stderr
    assert "-    CREATED --> TIMEOUT : timed-out" in stale.stderr
    assert "+    CREATED --> TIMEOUT : timed_out" in stale.stderr
    assert page.read_text(encoding="utf-8") != original  # --check writes nothing

    rewritten = run("docs/gen_docs.py", "--docs-dir", str(docs))
    assert rewritten.returncode == 0, rewritten.stderr
    assert page.read_text(encoding="utf-8") == original
    assert run("docs/gen_docs.py", "--check", "--docs-dir", str(docs)).returncode == 0


def test_check_fails_on_a_missing_file(tmp_path: Path) -> None:
    shutil.copy(DOCS / "operations.md", tmp_path)  # holds the marked sections
    completed = run("docs/gen_docs.py", "--check", "--docs-dir", str(tmp_path))
    assert completed.returncode == 1
    assert not (tmp_path / "state-machine.md").exists()


def sections(page: str) -> list[tuple[str, str]]:
    """``(heading, text)`` of each ``## `` section of a page."""
    return [(part.split("\n", 1)[0], part.split("\n", 1)[1]) for part in page.split("\n## ")[1:]]


def test_every_transition_is_in_the_state_machine_page(gen_docs: ModuleType) -> None:
    page: str = gen_docs.state_machine_page()
    (inviter_title, inviter), (invitee_title, invitee) = sections(page)
    assert inviter_title.startswith("Inviter") and invitee_title.startswith("Invitee")
    for text, table, start in (
        (inviter, INVITER_TRANSITIONS, "CREATED"),
        (invitee, INVITEE_TRANSITIONS, "DIALING"),
    ):
        for (source, trigger), target in table.items():
            diagram = f"    {source.value} --> {target.value} : {trigger.value}\n"
            row = f"| `{source.value}` | `{trigger.value}` | `{target.value}` |\n"
            assert text.count(diagram) == 1, diagram
            assert text.count(row) == 1, row
        arrows = [line for line in text.splitlines() if " --> " in line]
        rows = [line for line in text.splitlines() if line.startswith("| `")]
        assert len(rows) == len(table)
        assert len(arrows) == len(table) + 1 + 3  # + the start and the three terminal states
        assert text.count("```mermaid\nstateDiagram-v2\n") == 1
        assert f"    [*] --> {start}\n" in text
        for terminal in ("COMPLETED", "FAILED", "TIMEOUT"):
            assert f"    {terminal} --> [*]\n" in text
            assert f"* `{terminal}`\n" in text


def test_state_machine_page_keeps_table_order(gen_docs: ModuleType) -> None:
    page: str = gen_docs.state_machine_page()
    (_, inviter), (_, invitee) = sections(page)
    for text, table in ((inviter, INVITER_TRANSITIONS), (invitee, INVITEE_TRANSITIONS)):
        rows = [line for line in text.splitlines() if line.startswith("| `")]
        assert rows == [
            f"| `{source.value}` | `{trigger.value}` | `{target.value}` |"
            for (source, trigger), target in table.items()
        ]
    assert gen_docs.state_machine_page() == page  # deterministic


def test_marked_section_is_replaced_in_place(gen_docs: ModuleType) -> None:
    text = (
        "# Page\n\nhand-written\n\n<!-- BEGIN GENERATED: ref -->\nold\nlines\n"
        "<!-- END GENERATED: ref -->\n\nmore hand-written\n"
    )
    replaced = gen_docs.replace_marked(text, "ref", "\nnew\n\n")
    assert replaced == (
        "# Page\n\nhand-written\n\n<!-- BEGIN GENERATED: ref -->\nnew\n"
        "<!-- END GENERATED: ref -->\n\nmore hand-written\n"
    )
    assert gen_docs.replace_marked(replaced, "ref", "new") == replaced


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        "<!-- BEGIN GENERATED: ref -->\nonly the start\n",
        "<!-- END GENERATED: ref -->\n<!-- BEGIN GENERATED: ref -->\n",
        "<!-- BEGIN GENERATED: ref -->\n<!-- END GENERATED: ref -->\n"
        "<!-- BEGIN GENERATED: ref -->\n<!-- END GENERATED: ref -->\n",
    ],
    ids=["missing", "no-end", "reversed", "twice"],
)
def test_bad_markers_are_refused(gen_docs: ModuleType, text: str) -> None:
    with pytest.raises(gen_docs.GenerationError):
        gen_docs.replace_marked(text, "ref", "body")


def test_marker_target_through_run(
    gen_docs: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "ops.md"
    page.write_text(
        "# Ops\n<!-- BEGIN GENERATED: cfg -->\n<!-- END GENERATED: cfg -->\ntail\n",
        encoding="utf-8",
    )
    targets = [gen_docs.Target("ops.md", lambda: "| a | b |", marker="cfg")]
    assert gen_docs.run(tmp_path, check=True, targets=targets) == 1
    assert "+| a | b |" in capsys.readouterr().err
    assert gen_docs.run(tmp_path, check=False, targets=targets) == 0
    assert page.read_text(encoding="utf-8") == (
        "# Ops\n<!-- BEGIN GENERATED: cfg -->\n| a | b |\n<!-- END GENERATED: cfg -->\ntail\n"
    )
    assert gen_docs.run(tmp_path, check=True, targets=targets) == 0
    missing = [gen_docs.Target("absent.md", lambda: "x", marker="cfg")]
    with pytest.raises(gen_docs.GenerationError):
        gen_docs.run(tmp_path, check=True, targets=missing)


def test_operations_page_lists_every_config_key_and_command(gen_docs: ModuleType) -> None:
    from taleus_bootstrap.cli import Settings, cli

    page = (DOCS / "operations.md").read_text()
    for section in Settings.model_fields:
        model = Settings.model_fields[section].annotation
        for key in model.model_fields:  # type: ignore[union-attr]
            assert f"| `{key}` |" in page, (section, key)
    for name in cli.commands:
        assert f"### `taleus-bootstrap {name}`" in page
    assert "### `taleus-bootstrap tokens revoke`" in page

"""The documentation site: generated pages are current, and ``mkdocs build --strict`` passes.

``docs/gen_docs.py`` writes ``docs/state-machine.md`` from the transition tables; a table change
without a regenerated page fails :func:`test_generated_docs_are_current`. The built site draws
the state diagrams with the mermaid release ``docs/package-lock.json`` pins, served from the
site itself (``docs/mermaid_hook.py``): it loads no remote script or stylesheet.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest

from taleus_bootstrap import INVITEE_TRANSITIONS, INVITER_TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GEN_DOCS = DOCS / "gen_docs.py"
PAGES = ("index", "protocol", "state-machine", "hooks", "operations", "performance", "security")


def run(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # the first build runs `npm ci` for the diagram renderer
        check=False,
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


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as ``mkdocs build --strict`` builds it (once for the module)."""
    site = tmp_path_factory.mktemp("site")
    completed = run("-m", "mkdocs", "build", "--strict", "-d", str(site))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    assert "WARNING" not in completed.stderr, completed.stderr[-5000:]
    return site


def test_mkdocs_build_is_strict_clean(site: Path) -> None:
    assert (site / "index.html").is_file()
    for page in PAGES[1:]:
        assert (site / page / "index.html").is_file(), f"{page} was not built"
    assert "stateDiagram-v2" in (site / "state-machine" / "index.html").read_text(encoding="utf-8")
    assert not list(site.rglob("*.py")), "the generator script was published"


class PageParser(HTMLParser):
    """The scripts, stylesheets and ``<div class="mermaid">`` texts of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str | None] = []  # src, or None for an inline script
        self.stylesheets: list[str] = []
        self.diagrams: list[str] = []
        self._in_diagram = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes.get("src"))
        elif tag == "link" and "stylesheet" in (attributes.get("rel") or ""):
            self.stylesheets.append(attributes.get("href") or "")
        elif tag == "div" and "mermaid" in (attributes.get("class") or "").split():
            self._in_diagram = True
            self.diagrams.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self._in_diagram = False

    def handle_data(self, data: str) -> None:
        if self._in_diagram:
            self.diagrams[-1] += data


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def is_remote(url: str) -> bool:
    return bool(re.match(r"^([a-z][a-z0-9+.-]*:|//)", url, re.IGNORECASE))


def test_state_diagrams_are_drawn_by_a_local_mermaid(gen_docs: ModuleType, site: Path) -> None:
    page_dir = site / "state-machine"
    page = parse_page(page_dir / "index.html")
    fences = re.findall(r"```mermaid\n(.*?)```", gen_docs.state_machine_page(), re.DOTALL)
    assert len(fences) == 2
    # Each diagram is a <div class="mermaid"> holding the diagram's text, which mermaid draws.
    assert [html.unescape(d).strip() for d in page.diagrams] == [f.strip() for f in fences]

    sources = [src for src in page.scripts if src is not None]
    mermaid = [src for src in sources if src.endswith("mermaid.min.js")]
    assert mermaid == ["../js/mermaid.min.js"], sources
    bundle = (page_dir / mermaid[0]).resolve()
    lock = json.loads((DOCS / "package-lock.json").read_text(encoding="utf-8"))
    pinned = lock["packages"]["node_modules/mermaid"]["version"]
    text = bundle.read_text(encoding="utf-8")
    assert bundle.stat().st_size > 1_000_000 and f'"{pinned}"' in text, "not the pinned bundle"
    # The init script comes after the bundle and starts it.
    init = sources[sources.index(mermaid[0]) + 1]
    assert "mermaid.initialize(" in (page_dir / init).read_text(encoding="utf-8")
    assert "startOnLoad: true" in (page_dir / init).read_text(encoding="utf-8")

    # Only the pages with a diagram load the 3 MB renderer.
    assert not any(
        src and src.endswith("mermaid.min.js") for src in parse_page(site / "index.html").scripts
    )


def test_site_loads_nothing_remote_and_publishes_no_node_modules(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > len(PAGES)
    for path in pages:
        page = parse_page(path)
        for url in [src for src in page.scripts if src] + page.stylesheets:
            assert not is_remote(url), f"{path.relative_to(site)} loads {url}"
    for path in site.rglob("*"):
        if path.suffix in (".html", ".js", ".css", ".json"):
            text = path.read_text(encoding="utf-8", errors="replace")
            for cdn in ("cdnjs", "jsdelivr", "unpkg.com", "googleapis"):
                assert cdn not in text, f"{path.relative_to(site)} names {cdn}"
    names = {path.name for path in site.rglob("*")}
    assert "node_modules" not in names and "package-lock.json" not in names
    assert "package.json" not in names
    published = sorted(str(p.relative_to(site)) for p in site.rglob("*mermaid*"))
    assert published == ["js/mermaid-init.js", "js/mermaid.min.js"]


def test_build_without_npm_says_what_is_missing(tmp_path: Path) -> None:
    """Without ``docs/node_modules`` and with no npm on PATH, the build names what to install."""
    shutil.copytree(
        DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__", "node_modules")
    )
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    env = {**os.environ, "PATH": str(tmp_path / "no-such-bin")}
    completed = run(
        "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site"), cwd=tmp_path, env=env
    )
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert "npm is not on PATH" in output, output[-3000:]
    assert "Node.js" in output and "docs/package-lock.json" in output
    assert not (tmp_path / "docs" / "node_modules").exists()


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
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


@pytest.mark.parametrize(
    "command",
    [[], ["audit"], ["audit", "head"], ["dial"], ["tokens", "revoke"]],
    ids=lambda c: " ".join(c) or "top",
)
def test_command_reference_is_what_the_real_command_prints(command: list[str]) -> None:
    """Each block of the generated command reference is the real ``--help`` output (through
    the installed script, at the 100 columns the reference is rendered at)."""
    from .clirun import SCRIPT, cli_env

    path = " ".join(["taleus-bootstrap", *command])
    page = (DOCS / "operations.md").read_text(encoding="utf-8")
    found = re.search(rf"^### `{re.escape(path)}`\n\n```text\n(.*?)\n```$", page, re.M | re.S)
    assert found, f"no reference block for {path}"
    for flag in ("--help", "-h"):
        proc = subprocess.run(
            [SCRIPT, *command, flag],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env({"COLUMNS": "200"}),
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.rstrip("\n") == found.group(1), flag
    assert "  -h, --help  " in found.group(1) or "-h, --help " in found.group(1)
    if not command:
        assert "--version" in found.group(1) and "--debug" in found.group(1)

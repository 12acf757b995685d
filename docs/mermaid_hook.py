"""MkDocs hook: draw the site's Mermaid diagrams with a vendored renderer, without network access.

``mkdocs.yml`` lists this file under ``hooks:``. The ```` ```mermaid ```` fences come out of
``pymdownx.superfences`` as ``<div class="mermaid">`` (see ``custom_fences`` in mkdocs.yml);
this hook

* before the build, makes sure ``docs/node_modules`` holds the ``mermaid`` release that
  ``docs/package-lock.json`` pins, running ``npm ci`` in ``docs/`` when it does not (a clear
  error says so when Node.js/npm is missing);
* adds ``<script src=".../js/mermaid.min.js">`` and ``js/mermaid-init.js`` (a static page of
  docs/) to each page that has a diagram, as relative URLs: the site loads nothing remote;
* after the build, copies the one file it needs, ``mermaid/dist/mermaid.min.js``, into the
  site's ``js/`` directory. Nothing else of ``node_modules`` is published (``exclude_docs``).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

DOCS: Final = Path(__file__).resolve().parent
LOCK: Final = DOCS / "package-lock.json"
MERMAID: Final = DOCS / "node_modules" / "mermaid"
BUNDLE: Final = MERMAID / "dist" / "mermaid.min.js"
SITE_PATH: Final = "js/mermaid.min.js"  # where the bundle lands in the built site
INIT_PATH: Final = "js/mermaid-init.js"  # docs/js/mermaid-init.js, published as a static file
MARK: Final = '<div class="mermaid">'
log = logging.getLogger(f"mkdocs.plugins.{__name__}")

NPM_CI: Final = ("npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error")


def pinned_version() -> str:
    """The mermaid version ``docs/package-lock.json`` pins."""
    lock = json.loads(LOCK.read_text(encoding="utf-8"))
    return str(lock["packages"]["node_modules/mermaid"]["version"])


def installed_version() -> str | None:
    """The mermaid version in ``docs/node_modules`` (None: not installed, or no bundle)."""
    try:
        manifest = json.loads((MERMAID / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(manifest.get("version")) if BUNDLE.is_file() else None


def ensure_renderer() -> Path:
    """The pinned ``mermaid.min.js``, installed with ``npm ci`` first if it is missing or stale."""
    wanted = pinned_version()
    if installed_version() == wanted:
        return BUNDLE
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError(
            f"the docs' diagram renderer (mermaid {wanted}, pinned by docs/package-lock.json) is "
            "not installed in docs/node_modules, and npm is not on PATH to install it: install "
            "Node.js 18+ with npm (Debian: apt-get install nodejs npm), or run `npm ci` in docs/ "
            "on a machine that has it, then build again"
        )
    log.info("installing mermaid %s in %s/node_modules (npm ci)", wanted, DOCS)
    completed = subprocess.run(
        [npm, *NPM_CI[1:]], cwd=DOCS, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0 or installed_version() != wanted:
        raise PluginError(
            f"`{' '.join(NPM_CI)}` in {DOCS} failed (exit {completed.returncode}); it must "
            f"install mermaid {wanted} from the npm registry:\n"
            + (completed.stderr or completed.stdout)[-2000:]
        )
    return BUNDLE


def on_pre_build(config: MkDocsConfig) -> None:
    """Install the renderer before any page is built, so a missing npm fails early."""
    ensure_renderer()


def on_post_page(output: str, page: Page, config: MkDocsConfig) -> str:
    """Load the local renderer on the pages that hold a diagram."""
    if MARK not in output:
        return output
    scripts = "".join(
        f'<script src="{get_relative_url(path, page.url)}"></script>\n'
        for path in (SITE_PATH, INIT_PATH)
    )
    head, body_end, tail = output.rpartition("</body>")
    if not body_end:
        raise PluginError(f"{page.file.src_uri}: no </body> to put the mermaid scripts before")
    return head + scripts + body_end + tail


def on_post_build(config: MkDocsConfig, **_: Any) -> None:
    """Publish the one file of ``node_modules`` the site needs."""
    target = Path(config.site_dir) / SITE_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ensure_renderer(), target)

// Draws the page's <div class="mermaid"> diagrams with the vendored js/mermaid.min.js, which the
// page loads just before this file (docs/mermaid_hook.py adds both): nothing is fetched remotely.
mermaid.initialize({ startOnLoad: true, securityLevel: "strict", theme: "default" });

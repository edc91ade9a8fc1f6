"""Writing the docs site: one self-contained `target/index.html`.

The page's script, stylesheet and data are inlined, so the file opens from disk (file://) with no
server, no fetch of local files (browsers refuse those from file://) and no network: nothing is loaded
from a CDN. The script and stylesheet are batchflow's own (`batchflow/docs/static/`, package data).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

INDEX = "index.html"
_STATIC = ("app.js", "app.css", "index.html")


def static_text(name: str) -> str:
    """One of the site's static files, as shipped in the package."""
    if name not in _STATIC:
        raise ValueError(f"no static docs file {name!r}")
    return resources.files("batchflow.docs").joinpath("static", name).read_text(encoding="utf-8")


def data_script(catalog: dict[str, Any]) -> str:
    """The catalog as JSON that is safe inside a <script> element: `<`, `>` and `&` escaped, so text
    such as `</script>` in a description or SQL cannot end the element."""
    text = json.dumps(catalog, separators=(",", ":"), default=str, ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_page(catalog: dict[str, Any]) -> str:
    """The whole page, with the script, stylesheet and data in it."""
    page = static_text("index.html")
    title = f"{catalog['metadata']['project']} · batchflow docs"
    parts = {"/*BATCHFLOW_CSS*/": static_text("app.css"), "/*BATCHFLOW_JS*/": static_text("app.js"),
             "BATCHFLOW_DATA": data_script(catalog), "BATCHFLOW_TITLE": _escape_html(title)}
    missing = [m for m in parts if m not in page]
    if missing:
        raise RuntimeError(f"docs template lacks {missing}")
    # one pass, so text put in (the script, the data) is never searched for markers itself
    return re.sub("|".join(re.escape(m) for m in parts), lambda found: parts[found.group(0)], page)


def write_site(catalog: dict[str, Any], target_dir: Path) -> Path:
    """Write `target_dir/index.html` (atomically: a reader never sees half a page). Returns its path."""
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / INDEX
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_page(catalog), encoding="utf-8")
    tmp.replace(path)
    return path


def _escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

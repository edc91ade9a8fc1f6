"""The docs site in a real headless browser: Debian's Chromium driven by Playwright (never a browser
Playwright downloads). The example project is built, run a second time with two new reviews (so the
batch model has two runs of history), and `docs generate` writes target/index.html, which is opened
from disk (file://) and through `docs serve`.

CI installs the browser (`.ci/run`: apt-get install chromium when /usr/bin/chromium is missing).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from batchflow import api
from tests.conftest import CLI
from tests.test_docs import add_two_reviews

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def site(cli: CLI) -> Path:
    """target/index.html of the example after a build and a second run."""
    assert cli("build").exit_code == 0
    add_two_reviews(cli.project)
    assert cli("run").exit_code == 0
    return api.docs_generate(cli.project).path


@pytest.fixture
def example(site: Path) -> dict[str, list[str]]:
    """Every node of the example and what it reads, from the compiled project."""
    manifest = api.load(site.parent.parent).manifest
    nodes = {name: node.depends_on for name, node in manifest.nodes.items()}
    assert {"source:shop.reviews", "products", "review_requests", "review_labels", "daily_sentiment"} <= set(nodes)
    return nodes


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A Chromium context with a fresh profile, and the console errors of its pages."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000})
        context.errors = []  # type: ignore[attr-defined]

        def watch(page: Any) -> None:
            page.on("console", lambda m: m.type == "error" and context.errors.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: context.errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: context.errors.append(f"request failed: {r.url}"))

        context.on("page", watch)
        try:
            yield context
        finally:
            context.close()


def _visible_nav(page: Any) -> list[str]:
    return page.eval_on_selector_all("#sidebar .nav-item[data-node]:not(.hidden)", "els => els.map(e => e.dataset.node)")


def test_the_site_in_chromium_from_disk(site: Path, example: dict[str, list[str]], browser: Any,
                                        tmp_path: Path) -> None:
    page = browser.new_page()
    page.goto(site.as_uri())
    page.wait_for_selector("#graph g.node")

    # the graph shows every node of the example, and the list names them too
    drawn = page.eval_on_selector_all("#graph g.node", "els => els.map(e => e.dataset.node)")
    assert sorted(drawn) == sorted(example)
    assert page.locator("#graph path.edge").count() == sum(len(deps) for deps in example.values())
    assert set(_visible_nav(page)) == set(example)

    # clicking a node selects it (URL hash, as dbt docs) and shows its SQL and columns
    page.click('#graph g.node[data-node="review_labels"]')
    page.wait_for_function("location.hash === '#!/model/review_labels'")
    assert page.inner_text("#detail h2") == "review_labels"
    assert "from `reviews`.`review_requests`" in page.inner_text("#sql")
    columns = page.eval_on_selector_all("#columns-table tr.col-row", "els => els.map(e => e.dataset.column)")
    assert columns[:4] == ["review_id", "product_id", "created_at", "sentiment"] and "outcome" in columns
    assert "Sentiment and summary per review" in page.inner_text("#detail .description")
    assert page.locator('#graph g.node.selected[data-node="review_labels"]').count() == 1
    page.click('#detail .tabs button[data-tab="source"]')
    assert "{{ ref('review_requests') }}" in page.inner_text("#sql")

    # a column's lineage, from sqlglot: outcome comes from the batch model's response and status
    page.click('#columns-table tr.col-row[data-column="outcome"] td')
    lineage = page.inner_text("#column-lineage")
    assert "review_requests.status" in lineage and "review_requests.response" in lineage
    assert "daily_sentiment.unlabeled" in lineage  # and what reads it downstream

    # search filters the list and dims the rest of the graph
    page.fill("#search", "safety")
    assert _visible_nav(page) == ["review_safety_ratings"]
    undimmed = page.eval_on_selector_all("#graph g.node:not(.dim)", "els => els.map(e => e.dataset.node)")
    assert undimmed == ["review_safety_ratings"]
    page.fill("#search", "review text")  # a column description (the source's `body`)
    assert _visible_nav(page) == ["source:shop.reviews"]
    page.fill("#search", "")
    assert set(_visible_nav(page)) == set(example)

    # a batch model shows its history: two runs, as plots and tables
    page.click('#sidebar .nav-item[data-node="review_requests"]')
    page.wait_for_selector("#batch-history")
    assert page.locator("#runs-table tbody tr").count() == 2
    assert page.locator("#jobs-table tbody tr").count() == 2
    assert page.locator("#plot-rows svg rect.bar").count() >= 3  # run 1 sent; run 2 sent and reused
    assert page.locator("#plot-tokens svg circle.point").count() == 6  # prompt, output, total × 2 runs
    assert page.locator("#plot-cost svg circle.point").count() == 4
    assert page.locator("#plot-outcomes svg rect.bar").count() >= 3
    run2 = page.inner_text("#runs-table tbody tr:nth-child(2)")
    assert "\t2\t52\t" in run2  # sent 2, reused 52

    # a test shows the query it runs
    page.goto(site.as_uri() + "#!/test/accepted_values_review_labels_outcome__ok__row_error__prompt_blocked__candidate_blocked__truncated")
    page.wait_for_function("document.querySelector('#detail h2').textContent.startsWith('accepted_values')")
    assert "candidate_blocked" in page.inner_text("#sql")

    page.goto(site.as_uri() + "#!/model/review_requests")
    page.wait_for_selector("#plot-rows")
    shot = tmp_path / "docs-review_requests.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, site.parent / shot.name)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 20_000
    assert browser.errors == []


def test_the_site_through_docs_serve(site: Path, example: dict[str, list[str]], browser: Any, cli: CLI) -> None:
    server = api.docs_server(cli.project, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        page = browser.new_page()
        page.goto(f"http://{host}:{port}/#!/seed/products")
        page.wait_for_selector("#detail h2")
        assert page.inner_text("#detail h2") == "products"
        assert page.locator("#graph g.node").count() == len(example)
        assert browser.errors == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

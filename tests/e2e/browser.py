"""Browser fixtures for the web UI's end-to-end tests: Debian's Chromium driven by Playwright, a page
per test that fails on JavaScript errors and leaves a screenshot, and accessibility/keyboard checks.

None of this needs the cluster: a test that wants the controller's UI asks for that fixture itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test` installs it when run as root
# --no-sandbox: tests run as root. The background-networking flags keep Chromium from dialling
# Google's hosts, which this closed network refuses many connections at a time. Playwright gives each
# launch a fresh, empty profile (a user-data-dir of its own), removed when the browser closes.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
FAILING_IMPACTS = ("serious", "critical")


@dataclass
class PageErrors:
    """Console errors and uncaught exceptions of one page, as lines; `check` fails when any is left.

    A test that provokes an error on purpose (a 403 the browser logs, say) excuses it with `allow`.
    """

    messages: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def watch(self, page: Page) -> PageErrors:
        """Record page's errors from now on; returns self."""
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        return self

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            self.messages.append(f"console error at {where.get('url')}:{where.get('lineNumber')}: {message.text}")

    def _page_error(self, error: Error) -> None:
        self.messages.append(f"uncaught {error.name}: {error.message}")

    def allow(self, pattern: str) -> None:
        """Excuse the errors whose line matches the regular expression pattern (re.search)."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [m for m in self.messages if not any(p.search(m) for p in self.allowed)]

    def check(self) -> None:
        if errors := self.unexpected():
            raise AssertionError(f"{len(errors)} JavaScript error(s) on the page:\n" + "\n".join(errors))


# Module scope, not session: while Playwright's sync API is started, its event loop counts as
# running in this thread, so asyncio.run() fails in any later test of the run (tests/unit's kopf
# ones come after tests/e2e). Stopped at the end of each module, a launch costs well under a second.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Debian Chromium for the test module."""
    if not CHROMIUM.is_file():
        pytest.fail(f"the browser tests need {CHROMIUM}: run `make test` as root, or sudo apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page_errors() -> PageErrors:
    """The JavaScript errors of this test's `page`; the test fails at teardown if any is not allowed."""
    return PageErrors()


@pytest.fixture
def page(browser: Browser, page_errors: PageErrors, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a context of its own (no cookies or storage from other tests), 1280x800. At teardown
    a full-page screenshot goes to tests/e2e/artifacts/<test name>.png, and any JavaScript console
    error or uncaught exception fails the test."""
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    page_errors.watch(pg)
    try:
        yield pg
    finally:
        try:
            save_screenshot(pg, request.node.name)
        finally:
            context.close()
    page_errors.check()


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot at tests/e2e/artifacts/<name>.png (name made safe for a file name)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^\w.\[\]-]+", "_", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_accessible(page: Page, *, impacts: tuple[str, ...] = FAILING_IMPACTS, disable: tuple[str, ...] = ()) -> None:
    """axe-core (vendored, tests/e2e/vendor) on the page as it is now; fails on any violation whose
    impact is in impacts, naming the rule, its help text and the offending elements. disable: axe
    rule ids to leave out (say why at the call)."""
    # Evaluated through the DevTools protocol rather than added as a <script>: a page whose
    # Content-Security-Policy allows only its own scripts (as the UI's does) would refuse the tag.
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    options = {"resultTypes": ["violations"], "rules": {rule: {"enabled": False} for rule in disable}}
    results = page.evaluate("options => window.axe.run(document, options)", options)
    failing = [v for v in results["violations"] if v.get("impact") in impacts]
    if failing:
        lines = []
        for v in failing:
            targets = ", ".join(" ".join(map(str, node["target"])) for node in v["nodes"])
            lines.append(f"{v['id']} ({v['impact']}): {v['help']}: {targets}")
        raise AssertionError(f"{len(failing)} accessibility violation(s) on {page.url}:\n" + "\n".join(lines))


# Run in the page: what Tab should reach (visible, enabled, tabindex >= 0, one per radio group), and
# whether the focused element shows it (an outline or a box-shadow; Chromium's own ring is an outline).
_FOCUSABLES_JS = """() => {
  const selector = 'a[href], area[href], button, input:not([type=hidden]), select, textarea, summary, iframe,'
    + ' [tabindex], [contenteditable=""], [contenteditable=true]';
  // checkVisibility: also false inside a closed <details>, whose content keeps its boxes but is
  // skipped by rendering and by Tab.
  const visible = el => el.getClientRects().length > 0 && el.checkVisibility({visibilityProperty: true});
  const radios = new Set();
  const list = [...document.querySelectorAll(selector)].filter(el => {
    if (el.tabIndex < 0 || el.matches(':disabled') || el.closest('[inert]') || !visible(el)) return false;
    if (el.type === 'radio' && el.name) {
      const group = (el.form ? 'form' : 'doc') + ':' + el.name;
      if (radios.has(group)) return false;
      radios.add(group);
    }
    return true;
  });
  window.__gantryFocusables = list;
  return list.length;
}"""
_FOCUSED_JS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body || el === document.documentElement) return null;
  const list = window.__gantryFocusables;
  let index = list.indexOf(el);
  if (index < 0 && el.type === 'radio') index = list.findIndex(o => o.type === 'radio' && o.name === el.name);
  // Focusable without being in the list (a scrollable box, say): still checked, counted once.
  if (index < 0) index = list.push(el) - 1;
  const style = getComputedStyle(el);
  const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
  const shadow = style.boxShadow !== 'none';
  const text = (el.getAttribute('aria-label') || el.innerText || el.value || '').trim().slice(0, 40);
  const name = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (text ? ` "${text}"` : '');
  return {index, name, visible: outline || shadow};
}"""


def assert_keyboard_usable(page: Page, *, max_tabs: int = 200) -> list[str]:
    """Tab from the top of the page through every focusable element: each must receive focus and
    show it (an outline or a box-shadow while focused), and none may be skipped. Returns the
    elements in the order Tab reached them (tag#id "text"), for a test to check the order."""
    expected = page.evaluate(_FOCUSABLES_JS)
    reached: list[str] = []
    seen: set[int] = set()
    problems: list[str] = []
    left_page = False
    for _ in range(max_tabs):
        page.keyboard.press("Tab")
        focused = page.evaluate(_FOCUSED_JS)
        # Tab starts after whatever was last clicked or focused, so focus may leave the page (past
        # the last element) once before the first; round when it leaves again or is back at the start.
        if focused is None:
            if left_page or not expected:
                break
            left_page = True
            continue
        if focused["index"] in seen:
            break
        seen.add(focused["index"])
        reached.append(focused["name"])
        if not focused["visible"]:
            problems.append(f"{focused['name']} gets focus but shows no outline or box-shadow")
    else:
        problems.append(f"Tab did not come round within {max_tabs} presses (a focus trap?)")
    missed = page.evaluate("([expected, seen]) => window.__gantryFocusables.slice(0, expected)"
                           ".map((el, i) => seen.includes(i) ? null : el.tagName.toLowerCase() + (el.id ? '#' + el.id : ''))"
                           ".filter(Boolean)", [expected, sorted(seen)])
    problems += [f"{name} is never reached with Tab" for name in missed]
    if problems:
        raise AssertionError(f"keyboard use of {page.url} ({expected} focusable elements):\n" + "\n".join(problems))
    return reached

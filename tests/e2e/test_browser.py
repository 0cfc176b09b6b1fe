"""The browser test fixtures themselves (tests/e2e/browser.py), on small pages served from loopback:
no cluster, a few seconds in all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from browser import ARTIFACTS, PageErrors, assert_accessible, assert_keyboard_usable, save_screenshot

pytestmark = pytest.mark.browser


def html(title: str, body: str, head: str = "") -> str:
    return f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>{head}</head>' \
           f"<body><main><h1>{title}</h1>{body}</main></body></html>"


# What the UI will do: scripts only from its own origin, under a strict Content-Security-Policy.
CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'"
PAGES = {
    "/counter": html("Counter", '<p id="count">clicked 0 times</p><button id="more">Click me</button>'
                                '<script src="/counter.js"></script>'),
    "/counter.js": "let n = 0; document.getElementById('more').addEventListener('click', () => {"
                   " n += 1; document.getElementById('count').textContent = `clicked ${n} times`; });",
    "/console-error": html("Console error", '<script src="/console-error.js"></script>'),
    "/console-error.js": "console.error('boom: status unknown');",
    "/uncaught": html("Uncaught", '<script src="/uncaught.js"></script>'),
    "/uncaught.js": "null.status;",
    "/accessible": html("Accessible", '<img src="/logo.svg" alt="Gantry logo">'
                                      '<button type="button">Sync</button><a href="/counter">Counter</a>'),
    "/inaccessible": html("Inaccessible", '<img src="/logo.svg"><button type="button"></button>'),
    # Chromium asks for it by itself, and logs a 404 as a console error (which a page test fails on).
    "/favicon.ico": '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"/>',
    "/logo.svg": '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><circle cx="20" cy="20" r="18"/></svg>',
    "/keyboard": html("Keyboard", '<a href="/counter" id="first">Counter</a><input id="name" aria-label="Name">'
                                  '<fieldset><legend>Mode</legend>'
                                  '<label><input type="radio" name="mode" checked> manual</label>'
                                  '<label><input type="radio" name="mode"> automated</label></fieldset>'
                                  '<button id="go">Go</button><button disabled>Off</button>'
                                  '<span tabindex="-1">not in the tab order</span>'),
    "/no-focus-ring": html("No focus ring", '<button id="a">One</button><button id="b">Two</button>',
                           head="<style>button:focus { outline: none }</style>"),
    "/unreachable": html("Unreachable", '<button id="a">One</button><div id="menu" tabindex="0">Menu</div>'
                                        '<script src="/trap.js"></script>'),
    # Tab on #a is swallowed, so focus never gets to #menu.
    "/trap.js": "document.getElementById('a').addEventListener('keydown', e => {"
                " if (e.key === 'Tab') e.preventDefault(); });",
}
TYPES = {".js": "text/javascript", ".svg": "image/svg+xml", ".ico": "image/svg+xml"}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = PAGES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", next((t for s, t in TYPES.items() if self.path.endswith(s)), "text/html"))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_click_changes_the_page(page, site: str) -> None:
    page.goto(f"{site}/counter")
    page.get_by_role("button", name="Click me").click()
    page.get_by_role("button", name="Click me").click()
    assert page.locator("#count").inner_text() == "clicked 2 times"


@pytest.mark.parametrize(("path", "expected"), [
    ("/console-error", "console error at http://127.0.0.1:"),
    ("/uncaught", "uncaught TypeError: Cannot read properties of null"),
])
def test_page_errors_are_caught(browser, site: str, path: str, expected: str) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        errors = PageErrors().watch(page)
        page.goto(f"{site}{path}")
        page.wait_for_load_state("load")
        with pytest.raises(AssertionError, match="1 JavaScript error") as failure:
            errors.check()
        assert expected in str(failure.value)
        errors.allow("boom|Cannot read properties")
        errors.check()
    finally:
        context.close()


def test_a_clean_page_passes_the_error_check(browser, site: str) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        errors = PageErrors().watch(page)
        page.goto(f"{site}/counter")
        page.get_by_role("button").click()
        errors.check()
        assert errors.messages == []
    finally:
        context.close()


def test_the_page_fixture_lets_a_test_allow_its_own_errors(page, page_errors: PageErrors, site: str) -> None:
    page_errors.allow("boom: status unknown")
    page.goto(f"{site}/console-error")
    page.wait_for_load_state("load")
    assert len(page_errors.messages) == 1


def test_screenshot_lands_in_artifacts(page, site: str) -> None:
    page.goto(f"{site}/counter")
    path = save_screenshot(page, "test_browser[screenshot/check]")
    assert path.parent == ARTIFACTS and path.name == "test_browser[screenshot_check].png"
    assert path.read_bytes().startswith(b"\x89PNG")
    path.unlink()


def test_an_accessible_page_passes_axe(page, site: str) -> None:
    page.goto(f"{site}/accessible")
    assert_accessible(page)
    assert_accessible(page)  # axe injected once, run again (a page checked after each step)


def test_an_image_without_alt_and_a_button_without_name_fail_axe(page, site: str) -> None:
    page.goto(f"{site}/inaccessible")
    with pytest.raises(AssertionError) as failure:
        assert_accessible(page)
    message = str(failure.value)
    assert "image-alt (critical): Images must have alternative text: img" in message
    assert "button-name (critical): Buttons must have discernible text: button" in message
    assert_accessible(page, disable=("image-alt", "button-name"))


def test_keyboard_reaches_every_control_with_a_visible_focus(page, site: str) -> None:
    page.goto(f"{site}/keyboard")
    reached = assert_keyboard_usable(page)
    assert reached == ['a#first "Counter"', 'input#name "Name"', 'input "on"', 'button#go "Go"']
    page.get_by_role("textbox", name="Name").click()  # Tab now starts mid-page, and still reaches all
    assert sorted(assert_keyboard_usable(page)) == sorted(reached)


def test_keyboard_check_fails_on_a_hidden_focus_ring(page, site: str) -> None:
    page.goto(f"{site}/no-focus-ring")
    with pytest.raises(AssertionError, match='button#a "One" gets focus but shows no outline'):
        assert_keyboard_usable(page)


def test_keyboard_check_fails_on_an_unreachable_control(page, site: str) -> None:
    page.goto(f"{site}/unreachable")
    with pytest.raises(AssertionError, match="div#menu is never reached with Tab"):
        assert_keyboard_usable(page)

"""The web UI benchmark's edge: Debian's Chromium driven by Playwright, and a probe in each page that
timestamps, in the page's own clock, the moment a user would see something.

The probe is a Playwright init script (it runs before the page's scripts and, coming through the
DevTools protocol, is not subject to the page's Content-Security-Policy). A benchmark asks it to
watch for a state of the DOM (`expect`); the mark it leaves says when that state began to exist and
when the frame holding it had been laid out and painted. clock_offset and the pure helpers at the
end are checked by tests/unit/test_bench.py.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cluster import ROOT, BenchError

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

# One list of the flags that keep Debian's Chromium quiet here: the browser tests'.
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT  # noqa: E402

# In the page, before its own scripts. A wait is {name, test, on, since}: `test` a function of the
# DOM, `since` the moment the clock starts (0 = navigation start; "input"/"click": the next such
# event's timeStamp). `painted`: a task queued from the rendering update that holds the change runs
# once that update's style, layout and paint are done; when the change was made outside a
# rendering update (after a fetch, say), the next one is waited for first.
PROBE_JS = r"""
(() => {
  if (window.__benchProbe) return;
  const now = () => performance.now();
  const probe = window.__benchProbe = { marks: {}, waits: [], longTasks: [], streams: [] };
  const nativeFrame = window.requestAnimationFrame.bind(window);
  let inFrame = false;
  // The page's own requestAnimationFrame callbacks, flagged: a mutation made in one is painted in
  // this very rendering update. The flag is cleared by a microtask queued after the callback, so
  // the MutationObserver's delivery (queued by the callback's first mutation) still sees it set.
  window.requestAnimationFrame = (callback) => nativeFrame((time) => {
    inFrame = true;
    try { callback(time); } finally { queueMicrotask(() => { inFrame = false; }); }
  });
  function check() {
    for (const wait of probe.waits.slice()) {
      if (wait.since === null) continue;
      let ok = false;
      try { ok = Boolean(wait.test()); } catch (error) { ok = false; }
      if (!ok) continue;
      probe.waits.splice(probe.waits.indexOf(wait), 1);
      const dom = now();
      const record = () => setTimeout(() => { probe.marks[wait.name] = { since: wait.since, dom, painted: now() }; }, 0);
      if (inFrame) record(); else nativeFrame(record);
    }
  }
  probe.expect = (name, test, on = "now") => {
    delete probe.marks[name];
    probe.waits.push({ name, test, on, since: on === "now" ? now() : on === "navigation" ? 0 : null });
  };
  for (const type of ["input", "click"]) {
    document.addEventListener(type, (event) => {
      for (const wait of probe.waits) if (wait.on === type && wait.since === null) wait.since = event.timeStamp;
    }, true);
  }
  new MutationObserver(check).observe(document, { childList: true, subtree: true, characterData: true, attributes: true });
  try {
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) probe.longTasks.push([entry.startTime, entry.duration]);
    }).observe({ type: "longtask", buffered: true });
  } catch (error) { /* no Long Tasks API: no figure */ }
  // The page's live stream, as it arrives: when it opened, its first app, its `ready` (every app
  // the server had), and when the last event of each app came.
  const NativeEventSource = window.EventSource;
  window.EventSource = class extends NativeEventSource {
    constructor(...args) {
      super(...args);
      const stream = { opened: null, first: null, ready: null, events: 0, chars: 0, arrivals: {} };
      probe.streams.push(stream);
      this.addEventListener("open", () => { stream.opened = now(); });
      this.addEventListener("app", (event) => {
        const at = now();
        stream.events += 1;
        stream.chars += event.data.length;
        if (stream.first === null) stream.first = at;
        const found = /"namespace":"([^"]*)","name":"([^"]*)"/.exec(event.data.slice(0, 300));
        if (found) stream.arrivals[`${found[1]}/${found[2]}`] = at;
      });
      this.addEventListener("ready", () => { stream.ready = now(); });
    }
  };
})();
"""


@dataclass(frozen=True)
class Mark:
    """What the probe saw, in ms of the page's clock (performance.now(), 0 = navigation start)."""

    since: float  # the clock's start
    dom: float  # the DOM first held the state
    painted: float  # the frame holding it was laid out and painted

    @property
    def ms(self) -> float:
        return self.painted - self.since


class Tab:
    """A page with the probe, and Chromium's own account of its main thread (the DevTools
    Performance domain: time spent in script, style, layout since the page opened)."""

    def __init__(self, page: "Page", cdp: Any) -> None:
        self.page = page
        self._cdp = cdp

    def goto(self, url: str) -> None:
        self.page.goto(url, wait_until="commit")

    def expect(self, name: str, test: str, on: str = "now") -> None:
        """Watch for `test` (a JS expression of the DOM) from now, or from the next `on` event
        ("input", "click")."""
        self.page.evaluate(f"() => window.__benchProbe.expect({json.dumps(name)}, () => ({test}), {json.dumps(on)})")

    def mark(self, name: str, timeout: float) -> Mark:
        """Wait for the mark `name` (an expect's, or one given at load) and return it."""
        try:
            self.page.wait_for_function(f"() => {json.dumps(name)} in window.__benchProbe.marks", polling=20,
                                        timeout=timeout * 1000)
        except Exception as error:  # noqa: BLE001: Playwright's TimeoutError, named with what was awaited
            try:
                seen = self.page.evaluate("""() => ({visibility: document.visibilityState,
                  waiting: window.__benchProbe.waits.map((w) => w.name),
                  shows: (document.querySelector('main') || document.body).innerText})""")
            except Exception:  # noqa: BLE001: a page that is gone shows nothing
                seen = {"shows": "?"}
            raise BenchError(f"the page did not show {name!r} within {timeout:.0f}s ({self.page.url}): "
                             f"{str(error).splitlines()[0]}; page {seen.get('visibility')}, waiting for "
                             f"{seen.get('waiting')}; it shows: {' '.join(seen['shows'].split())[:600]}") from None
        return Mark(**self.page.evaluate(f"() => window.__benchProbe.marks[{json.dumps(name)}]"))

    def wait(self, js: str, timeout: float) -> None:
        self.page.wait_for_function(f"() => ({js})", polling=50, timeout=timeout * 1000)

    def evaluate(self, js: str) -> Any:
        return self.page.evaluate(js)

    def state(self) -> dict:
        """The probe's streams and long tasks, and the page's resource timings (ms)."""
        return self.page.evaluate("""() => ({
          streams: window.__benchProbe.streams, longTasks: window.__benchProbe.longTasks,
          timeOrigin: performance.timeOrigin,
          resources: performance.getEntriesByType("resource").map((e) => ({
            name: new URL(e.name).pathname, start: e.startTime, end: e.responseEnd, bytes: e.transferSize })),
        })""")

    def main_thread(self) -> dict[str, float]:
        """ms of the page's main thread so far: script, style, layout, all tasks."""
        metrics = {m["name"]: m["value"] for m in self._cdp.send("Performance.getMetrics")["metrics"]}
        return {key: metrics.get(name, 0.0) * 1000 for key, name in (
            ("script", "ScriptDuration"), ("style", "RecalcStyleDuration"), ("layout", "LayoutDuration"),
            ("tasks", "TaskDuration"))} | {"nodes": metrics.get("Nodes", 0.0)}

    def wall_ms(self) -> float:
        """The page's wall clock: timeOrigin + now(), ms since the epoch."""
        return self.page.evaluate("() => performance.timeOrigin + performance.now()")

    def clock_offset(self, samples: int = 7) -> tuple[float, float]:
        """The page's wall clock minus ours (time.time()), ms, and its uncertainty: half the round
        trip of the best of `samples` readings."""
        readings = []
        for _ in range(samples):
            before = time.time() * 1000
            seen = self.wall_ms()
            readings.append((before, seen, time.time() * 1000))
        return clock_offset(readings)


class Chromium:
    """A headless Debian Chromium for the benchmark; a fresh context (no cache, no cookies) per tab."""

    def __init__(self) -> None:
        self._playwright: Any = None
        self.browser: Browser | None = None

    def __enter__(self) -> "Chromium":
        if not CHROMIUM.is_file():
            raise BenchError(f"the UI benchmark needs {CHROMIUM}: sudo apt-get install chromium "
                             "(make test installs it when run as root)")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as error:
            raise BenchError(f"the UI benchmark needs Playwright from PyPI (make venv installs it): {error}") from None
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                        args=CHROMIUM_ARGS)
        return self

    def __exit__(self, *_: object) -> None:
        if self.browser is not None:
            self.browser.close()
        if self._playwright is not None:
            self._playwright.stop()

    @contextmanager
    def tab(self, expect_on_load: dict[str, str] | None = None) -> Iterator[Tab]:
        """A tab in a context of its own; `expect_on_load`: {mark name: JS expression of the DOM}
        watched for from navigation start. Fails if the page raised a JavaScript error."""
        assert self.browser is not None
        context: BrowserContext = self.browser.new_context(viewport=VIEWPORT)
        script = PROBE_JS + "".join(f"\nwindow.__benchProbe.expect({json.dumps(name)}, () => ({test}), 'navigation');"
                                    for name, test in (expect_on_load or {}).items())
        context.add_init_script(script)
        errors: list[str] = []
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        try:
            yield Tab(page, cdp)
        finally:
            context.close()
        if errors:
            raise BenchError(f"the page raised JavaScript errors: {'; '.join(errors[:3])}")


# ------------------------------------------------------------------------------------------------
# Pure helpers


def clock_offset(readings: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """From (ours before, theirs, ours after) readings, the offset theirs − ours and its
    uncertainty, taken from the reading with the shortest round trip (as NTP does)."""
    if not readings:
        raise ValueError("no clock readings")
    before, theirs, after = min(readings, key=lambda r: r[2] - r[0])
    return theirs - (before + after) / 2, (after - before) / 2


def matching(names: Sequence[str], typed: str) -> int:
    """How many of `names` the list's search box keeps for `typed` (ui.js: trimmed, lower-cased,
    a substring of the name)."""
    needle = typed.strip().lower()
    return sum(1 for name in names if needle in name.lower())


def longest_task(long_tasks: Sequence[Sequence[float]], start: float, end: float) -> float:
    """The longest main-thread task (ms; the Long Tasks API reports those over 50 ms) that began
    in [start, end]; 0 when there was none."""
    return max((duration for began, duration in long_tasks if start <= began <= end), default=0.0)

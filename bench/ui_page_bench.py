"""The web UI's run page: server render of a 500-job run, and how fast a job's status
change reaches an open page in Chromium.

    python bench/ui_page_bench.py [--jobs 500] [--renders 30] [--changes 20]

The server runs in this process over the embedded SQLite store (tests/api_server.py), a
session is signed in with a read token (tests/coordinator/server/ui/web_client.py).

1. Render: `GET /runs/{run}` of a `--jobs`-job run (20 levels), p50 / p95 of `--renders`,
   against `GET /api/v1/runs/{run}` of the same run (the JSON the page is drawn from).
   Target (issue #14): <= 200 ms.
2. Live update: the run page open in Debian's Chromium (Playwright); a job is claimed in
   the store (pending -> running) and the time until its graph node has class
   `status-running` is taken, `--changes` times; p50 / p95 against the state store write
   itself. Target: p95 <= 500 ms.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import percentile  # noqa: E402
from tests.api_server import add_run, serving  # noqa: E402
from tests.coordinator.server.ui.web_client import WebClient  # noqa: E402

RUN = "20261203-210000-ba5e00"


def pipeline(jobs: int, levels: int = 20) -> str:
    per = max(1, jobs // levels)
    lines = ["name: big", "jobs:"]
    for n in range(jobs):
        level = min(n // per, levels - 1)
        deps = f", depends_on: [j{(level - 1) * per + n % per}]" if level else ""
        lines.append(f"  j{n}: {{steps: [{{name: s, script: ['true']}}]{deps}}}")
    return "\n".join(lines) + "\n"


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--renders", type=int, default=30)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ui-page-bench-") as raw, serving(Path(raw)) as server:
        add_run(server, RUN, textwrap.dedent(pipeline(args.jobs)))
        token = server.tokens.create("bench", "read")
        client = WebClient(server.url)
        client.login(token)

        def page() -> None:
            answer = client.get(f"/runs/{RUN}")
            assert answer.status == 200 and "data-job=\"j0\"" in answer.body

        def api() -> None:
            assert server.request("GET", f"/api/v1/runs/{RUN}", token)[0] == 200

        timed(page, 3)
        renders, reads = timed(page, args.renders), timed(api, args.renders)
        latencies, writes = live_updates(server, token, args.changes)
    ms = 1000
    print(f"run page of {args.jobs} jobs: p50 {percentile(renders, 50) * ms:.0f} ms, p95 "
          f"{percentile(renders, 95) * ms:.0f} ms (target <= 200 ms); GET /api/v1/runs/{{run}} p50 "
          f"{percentile(reads, 50) * ms:.0f} ms; ratio {percentile(renders, 50) / percentile(reads, 50):.1f}")
    print(f"status change -> open page, {len(latencies)} changes: p50 {percentile(latencies, 50) * ms:.0f} ms, "
          f"p95 {percentile(latencies, 95) * ms:.0f} ms (target p95 <= 500 ms); the store write itself p50 "
          f"{percentile(writes, 50) * ms:.1f} ms")
    return 0


def live_updates(server, token: str, changes: int) -> tuple[list[float], list[float]]:
    from playwright.sync_api import sync_playwright

    latencies, writes = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/login")
            page.fill("#token", token)
            page.click("form[action='/login'] button[type=submit]")
            page.wait_for_url(server.url + "/")
            page.goto(f"{server.url}/runs/{RUN}")
            page.wait_for_selector('g.job[data-job="j0"]')
            time.sleep(1.0)  # the event stream is open
            for n in range(changes):
                name = f"j{n}"
                start = time.perf_counter()
                server.store.claim(RUN, name, "bench-worker", 600_000)
                writes.append(time.perf_counter() - start)
                page.wait_for_function(
                    "name => document.querySelector(`g.job[data-job=\"${name}\"]`)"
                    "?.classList.contains('status-running')", arg=name, timeout=10_000)
                latencies.append(time.perf_counter() - start)
        finally:
            browser.close()
    return latencies, writes


if __name__ == "__main__":
    raise SystemExit(main())

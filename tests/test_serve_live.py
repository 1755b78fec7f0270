"""`inca serve` as users run it: uvicorn on 127.0.0.1, concurrent HTTP clients, a graceful
shutdown that loses no accepted request, and the page in a real headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from inca.bench.serve import start_server  # noqa: E402
from inca.serve import ServeConfig, create_app  # noqa: E402
from tests.conftest import require_or_skip  # noqa: E402
from tests.test_serve import expected, png, probabilities, task_dirs  # noqa: E402, F401

pytestmark = pytest.mark.integration
CLASSES = {"pets": ["cat", "dog"], "weather": ["sunny", "rainy", "foggy"], "tuned": list("abcd")}


@contextlib.contextmanager
def live(app) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1 (a free port), in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_concurrent_requests_get_their_own_rows(task_dirs) -> None:  # noqa: F811
    """24 clients at once, each its own image and task set: requests share backbone passes,
    and each gets exactly the probabilities its image gets alone."""
    app = create_app([task_dirs[n] for n in CLASSES],
                     ServeConfig(max_wait_ms=50, max_batch=16), device="cpu",
                     precision="fp32")  # fmt: skip
    sets = [["pets"], ["weather", "tuned"], ["pets", "weather"], ["pets", "weather", "tuned"]]
    images = [png(100 + i, (24 + i, 30)) for i in range(24)]
    with live(app) as url, httpx.Client(base_url=url, timeout=60) as http:

        def call(i: int) -> dict:
            tasks = ",".join(sets[i % len(sets)])
            reply = http.post(f"/v1/predict?tasks={tasks}&top_k=10",
                              files=[("file", (f"{i}.png", images[i], "image/png"))])  # fmt: skip
            assert reply.status_code == 200, reply.text
            return reply.json()

        with ThreadPoolExecutor(24) as pool:
            replies = list(pool.map(call, range(24)))
        metrics = http.get("/metrics").text
    for i, reply in enumerate(replies):
        wanted = sets[i % len(sets)]
        assert list(reply["predictions"][0]["tasks"]) == wanted and reply["tasks"] == wanted
        alone = expected(task_dirs, list(CLASSES), images[i])
        for task in wanted:
            got = probabilities(reply, 0, task, CLASSES[task])
            torch.testing.assert_close(got, alone[task], atol=1e-5, rtol=1e-4)
    passes = int(next(line.split()[1] for line in metrics.splitlines()
                      if line.startswith("inca_batch_size_count")))  # fmt: skip
    assert passes < 24  # requests shared passes


def test_shutdown_finishes_every_accepted_request(task_dirs) -> None:  # noqa: F811
    """SIGTERM while 6 requests wait in a 1.5 s batching window, held open by a 7th whose body
    is still arriving (a batch waits for the requests on their way): all 7 are answered, then
    the server exits cleanly."""
    server, url = start_server([task_dirs["pets"]], "--max-wait-ms", "1500", "--device", "cpu",
                               "--precision", "fp32")  # fmt: skip
    try:
        host, port = url.removeprefix("http://").split(":")
        body = png(99)
        slow = socket.create_connection((host, int(port)), timeout=60)
        slow.sendall(f"POST /v1/predict HTTP/1.1\r\nhost: {host}\r\ncontent-type: image/png\r\n"
                     f"content-length: {len(body)}\r\n\r\n".encode() + body[:10])  # fmt: skip
        time.sleep(0.2)  # its request is being read

        def call(i: int) -> int:
            files = [("file", (f"{i}.png", png(i), "image/png"))]
            return httpx.post(f"{url}/v1/predict", files=files, timeout=60).status_code

        with ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(call, i) for i in range(6)]
            time.sleep(0.7)  # accepted, waiting in the window
            assert not any(c.done() for c in calls), "the requests did not wait for the 7th"
            server.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            slow.sendall(body[10:])
            codes = [c.result() for c in calls]
        assert codes == [200] * 6
        assert slow.recv(4096).startswith(b"HTTP/1.1 200")
        slow.close()
        # uvicorn re-raises the signal once shut down: the exit status says SIGTERM ended it
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "stopped after answering every accepted request" in server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_the_page_shows_every_tasks_top_3_in_a_real_browser(task_dirs, tmp_path) -> None:  # noqa: F811
    """Headless Chromium (Debian's, driven by Playwright) opens the page, uploads an image and
    shows each task's top-3 bars, the same labels and probabilities the API gives."""
    browser_path = chromium()
    require_or_skip(
        browser_path is not None,
        "no chromium here (Debian: apt-get install chromium; `make test` does)",
    )
    playwright = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "digit.png"
    image.write_bytes(png(7, (28, 28), "L"))
    app = create_app([task_dirs[n] for n in CLASSES], device="cpu", precision="fp32")
    with live(app) as url, playwright.sync_playwright() as p:
        api = httpx.post(
            f"{url}/v1/predict", files=[("file", ("digit.png", image.read_bytes(), "image/png"))]
        ).json()
        browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                    args=["--no-sandbox"])  # fmt: skip
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('tasks').textContent.includes('3 task')")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("section.task >> nth=2")
        shown = {
            s.get_attribute("data-task"): [
                (r.locator(".label").inner_text(), r.locator(".prob").inner_text())
                for r in s.locator(".row").all()
            ]
            for s in page.locator("section.task").all()
        }
        assert "latency" in page.locator("#status").inner_text()
        shot = Path(os.environ.get("INCA_PAGE_SCREENSHOT", tmp_path / "page.png"))
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    want = {t: [(x["label"], f"{100 * x['prob']:.1f}%") for x in top]
            for t, top in api["predictions"][0]["tasks"].items()}  # fmt: skip
    assert shown == want
    assert [len(v) for v in shown.values()] == [2, 3, 3]  # top-3, or every class of pets

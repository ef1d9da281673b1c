"""The browser bridge in real headless Chromium: a page with a redux-shaped store (tests/web/bridge.html)
loads clients/js/polarizer-bridge.js from a local web server, is clicked, and its state changes and
actions go to the agent's --emit-websocket. Run by tests/e2e/web.rs while a test runs; it then opens the
test's gate. On failure, a screenshot and the page are kept in $ARTIFACTS."""

import functools
import http.server
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import traceback

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BRIDGE = os.environ["BRIDGE_URL"]
MARKER = pathlib.Path(os.environ["MARKER"])
ARTIFACTS = pathlib.Path(os.environ["ARTIFACTS"])
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def serve(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    site = tempfile.mkdtemp()
    shutil.copy(ROOT / "clients" / "js" / "polarizer-bridge.js", site)
    shutil.copy(HERE / "bridge.html", pathlib.Path(site) / "index.html")
    server = serve(site)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-proxy-server"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"http://127.0.0.1:{server.server_port}/index.html?bridge={BRIDGE}")
        wait = WebDriverWait(driver, 60, poll_frequency=0.1)
        wait.until(lambda d: d.execute_script("return window.bridge && window.bridge.sent") == 1)
        driver.find_element(By.ID, "register").click()
        # The action, then the state it made.
        wait.until(lambda d: d.execute_script("return window.bridge.sent") == 3)
        counts = driver.execute_script(
            "return [window.bridge.refused, window.bridge.dropped, window.bridge.errors]")
        assert counts == [0, 0, []], counts
        print("ok")
    except Exception:
        driver.save_screenshot(str(ARTIFACTS / "bridge.png"))
        (ARTIFACTS / "bridge.html").write_text(driver.page_source)
        (ARTIFACTS / "bridge.console.txt").write_text(
            "\n".join(str(entry) for entry in driver.get_log("browser")))
        traceback.print_exc()
        sys.exit(1)
    finally:
        MARKER.write_text("")
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main()

"""Drives the web view in real headless Chromium (Debian's chromium and chromium-driver, Debian's
python3-selenium), as a developer following a run would: log in through the link `polarizer open`
printed, watch a run of the demo repository go from queued to its end without reloading the page, open
the failing test's output, then visit every other page. On failure, a screenshot, the page's HTML and the
browser's console are kept in $ARTIFACTS. Run by tests/e2e/web.rs, which starts an agent for the queued
run once this script says (the file $READY) that it is watching."""

import os
import pathlib
import sys
import traceback

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

LOGIN_URL = os.environ["LOGIN_URL"]
RUN = os.environ["RUN"]
READY = pathlib.Path(os.environ["READY"])
ARTIFACTS = pathlib.Path(os.environ["ARTIFACTS"])
WAIT = 90


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1800", "--no-proxy-server"]:
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def text(driver, selector):
    return driver.find_element(By.CSS_SELECTOR, selector).text.strip()


def until(driver, what, condition):
    try:
        # A page being replaced by the next one is asked again.
        return WebDriverWait(driver, WAIT, poll_frequency=0.1,
                             ignored_exceptions=[NoSuchElementException,
                                                 StaleElementReferenceException]).until(condition)
    except Exception as error:
        raise AssertionError(f"within {WAIT} s: {what}") from error


def follow_a_run(driver):
    driver.get(LOGIN_URL)
    until(driver, f"the login link leads to /runs/{RUN}",
          lambda d: d.current_url.endswith(f"/runs/{RUN}") and
          d.find_element(By.TAG_NAME, "body").get_attribute("data-page") == "run")
    state = text(driver, "#run-state")
    assert state == "queued", f"the run is {state!r} before any agent is there"
    # A mark only this page load has: a reload would lose it.
    driver.execute_script("window.polarizerSameLoad = true;")
    until(driver, "the page says it is live",
          lambda d: text(d, "#live").startswith("Live"))
    READY.write_text("")
    until(driver, "the run's state turns to running on the open page",
          lambda d: text(d, "#run-state") in ("running", "failed"))
    until(driver, "the run's state turns to failed on the open page",
          lambda d: text(d, "#run-state") == "failed")
    assert driver.execute_script("return window.polarizerSameLoad === true"), "the page was reloaded"
    until(driver, "every suite shows done",
          lambda d: d.execute_script(
              "return [...document.querySelectorAll('tr[data-suite] td.state .badge')]"
              ".every((badge) => badge.textContent === 'done')"))
    until(driver, "the suites' version chains are shown",
          lambda d: text(d, "tr[data-suite] td.versions").startswith("tests "))
    done, total = text(driver, "#run-done").split(" / ")
    assert done == total, text(driver, "#run-done")
    assert text(driver, 'tr[data-test="/tests/register/basic"] td.status') == "pass"
    row = 'tr[data-test="/tests/register/unregister"]'
    assert text(driver, f"{row} td.status") == "fail"
    driver.find_element(By.CSS_SELECTOR, f"{row} summary").click()
    output = driver.find_element(By.CSS_SELECTOR, f"{row} pre.output")
    until(driver, "the failing test's output is shown", lambda d: output.is_displayed())
    assert "consumer certificate still present" in output.text, output.text
    until(driver, "the timeline lists the run's events",
          lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline li")) > 0)
    # Replay plays the timeline again, in order.
    count = len(driver.find_elements(By.CSS_SELECTOR, "#timeline li"))
    driver.find_element(By.ID, "replay").click()
    until(driver, "the replay starts from the first event",
          lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline li")) < count)
    until(driver, "the replay shows every event again",
          lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline li")) == count)
    if os.environ.get("KEEP_SCREENSHOTS"):
        driver.save_screenshot(str(ARTIFACTS / "run.png"))


def other_pages(driver):
    driver.get(driver.current_url.split("/runs/")[0] + "/runs")
    until(driver, "the runs list links the run",
          lambda d: d.find_elements(By.CSS_SELECTOR, f'a[href="/runs/{RUN}"]'))
    driver.find_element(By.LINK_TEXT, "Agents").click()
    until(driver, "the agents page lists vm-1", lambda d: "vm-1" in text(d, "#rows"))
    if os.environ.get("KEEP_SCREENSHOTS"):
        driver.set_window_size(390, 844)
        driver.save_screenshot(str(ARTIFACTS / "agents-phone.png"))
        driver.set_window_size(1280, 1800)
    driver.find_element(By.LINK_TEXT, "Tests").click()
    until(driver, "the tests page lists the imported tests",
          lambda d: "/tests/register/unregister" in text(d, "main"))
    driver.find_element(By.LINK_TEXT, "Features").click()
    until(driver, "the features page shows the graph",
          lambda d: "register" in text(d, "#feature-register"))
    driver.find_element(By.LINK_TEXT, "Triggers").click()
    until(driver, "the triggers page answers", lambda d: text(d, "h1") == "Triggers")
    # Logged out, the pages ask for a new link.
    base = driver.current_url.split("/triggers")[0]
    driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
    until(driver, "the browser is logged out", lambda d: "You are logged out" in text(d, "main"))
    driver.get(base + "/runs")
    until(driver, "a logged-out browser is asked to log in",
          lambda d: "polarizer open" in text(d, "main"))


def main():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = browser()
    step = "start"
    try:
        for step, check in [("follow-a-run", follow_a_run), ("other-pages", other_pages)]:
            check(driver)
        print("ok")
    except Exception:
        driver.save_screenshot(str(ARTIFACTS / f"{step}.png"))
        (ARTIFACTS / f"{step}.html").write_text(driver.page_source)
        logs = "\n".join(str(entry) for entry in driver.get_log("browser"))
        (ARTIFACTS / f"{step}.console.txt").write_text(logs)
        traceback.print_exc()
        print(f"screenshot and page kept in {ARTIFACTS}", file=sys.stderr)
        sys.exit(1)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()

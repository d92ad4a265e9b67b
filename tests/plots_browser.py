"""Drives speedrelay's plots in headless chromium (for tests/plots.rs).

Argument: one JSON object (see tests/plots.rs). The test sends a ramp to
the channel (`value` = 2 x `time`), pausing once. Checks, from the page's
own data (the sparkline's data attributes, the stripchart's `plotted()`),
that the sparkline shows the pause as a dip and that the plotted points are
records that were sent; then the controls (fields, pause, zoom) by keyboard
and the screen-reader label. Prints one line per step and exits non-zero
with the reason when a check fails; screenshots go to `artifacts`.
"""

import json
import os
import sys
import time

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from selenium_common import check, headless_chromium, step

ARGS = json.loads(sys.argv[1])
ART = ARGS["artifacts"]


def browser():
    return headless_chromium(ARGS["chromium"], ARGS["chromedriver"], window="1280,1400")


def wait(driver, what, cond, timeout=30):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond(d))
    except TimeoutException:
        shot(driver, "plots-failure.png")
        raise AssertionError("timed out waiting for " + what) from None


def shot(driver, name):
    os.makedirs(ART, exist_ok=True)
    path = os.path.join(ART, name)
    driver.save_screenshot(path)
    print("screenshot:", path, flush=True)


def spark(driver, name):
    return driver.execute_script(
        "const c = document.querySelector(`#rows tr[data-name='${arguments[0]}'] canvas.spark`);"
        "return c && c.dataset.records ? c.dataset.records.split(',').map(Number) : null;",
        name,
    )


def has_dip(series):
    """A busy second, then at least two idle ones, then a busy one."""
    if not series:
        return False
    state = 0
    idle = 0
    for v in series:
        if state == 0 and v >= 50:
            state = 1
        elif state == 1 and v == 0:
            idle += 1
            if idle >= 2:
                state = 2
        elif state == 1:
            idle = 0
        elif state == 2 and v >= 50:
            return True
    return False


def plotted(driver):
    return driver.execute_script(
        "return window.speedrelay && window.speedrelay.chart ? window.speedrelay.chart.plotted() : null"
    )


def main_flow(driver):
    name = ARGS["channel"]
    step("the table shows the channel with a sparkline")
    driver.get(ARGS["url"])
    wait(driver, f"row {name}", lambda d: d.find_elements(By.CSS_SELECTOR, f"#rows tr[data-name='{name}']"))
    step("the sparkline shows the sender's pause as a dip")
    wait(driver, "a dip in the sparkline", lambda d: has_dip(spark(d, name)), timeout=60)
    label = driver.execute_script(
        f"return document.querySelector(\"#rows tr[data-name='{name}'] canvas.spark\").getAttribute('aria-label')"
    )
    check(label.startswith("Records per second over the last"), f"sparkline label: {label!r}")
    shot(driver, "plots-table.png")

    step("the stripchart opens from the row's Plot button, by keyboard")
    button = driver.find_element(By.CSS_SELECTOR, f"#rows tr[data-name='{name}'] button[data-action='plot']")
    button.send_keys(Keys.ENTER)
    wait(driver, "the plot card", lambda d: d.find_element(By.ID, "plot-card").is_displayed())
    check(driver.switch_to.active_element.get_attribute("id") == "plot-h", "focus on the plot's heading")
    wait(driver, "the field choices", lambda d: d.find_elements(By.CSS_SELECTOR, "#plot-fields input"))
    fields = [
        (e.get_attribute("data-field"), e.find_element(By.XPATH, "..").text)
        for e in driver.find_elements(By.CSS_SELECTOR, "#plot-fields input")
    ]
    check([f for f, _ in fields] == ["value"], f"numeric fields but the time axis: {fields}")
    check("value (V)" in fields[0][1], f"the field's unit is shown: {fields}")
    x_text = driver.find_element(By.ID, "plot-x").text
    check("time" in x_text and "(s)" in x_text, f"the x-axis is the time field: {x_text!r}")

    step("the plotted points are records that were sent (value = 2 x time)")
    wait(driver, "30 plotted points", lambda d: (plotted(d) or {}).get("value") and len(plotted(d)["value"]) >= 30)
    points = plotted(driver)["value"]
    for x, y in points:
        check(abs(y - 2 * x) < 1e-9, f"plotted ({x}, {y}) is not a sent record")
    xs = [x for x, _ in points]
    check(xs == sorted(xs), "x increases")
    check(all(abs(x * 100 - round(x * 100)) < 1e-6 for x in xs), "x values are the sent times")

    step("the latest value is in the table and the plot's label")
    wait(driver, "a latest value", lambda d: d.find_elements(By.CSS_SELECTOR, "#plot-latest tr[data-field='value']"))
    canvas = driver.find_element(By.ID, "plot-canvas")
    wait(driver, "the label with the latest value", lambda d: "Latest: value" in canvas.get_attribute("aria-label"))
    check(" V" in canvas.get_attribute("aria-label"), "the label says the unit")
    shot(driver, "plots-stripchart.png")

    step("space on the plot pauses it; the points stop changing")
    canvas.send_keys(Keys.SPACE)
    pause = driver.find_element(By.ID, "plot-pause")
    check(pause.get_attribute("aria-pressed") == "true", "Pause is pressed")
    frozen = plotted(driver)["value"]
    time.sleep(1.0)
    check(plotted(driver)["value"] == frozen, "paused: nothing new plotted")
    pause.click()
    check(pause.get_attribute("aria-pressed") == "false", "resumed")

    step("- and + zoom the time window")
    canvas.send_keys("-")
    check(driver.find_element(By.ID, "plot-window").get_attribute("value") == "60", "zoomed out to 1 min")
    canvas.send_keys("+")
    canvas.send_keys("+")
    check(driver.find_element(By.ID, "plot-window").get_attribute("value") == "10", "zoomed in to 10 s")
    wait(driver, "points again", lambda d: (plotted(d) or {}).get("value"))
    xs = [x for x, _ in plotted(driver)["value"]]
    check(xs[-1] - xs[0] <= 10.0 + 1e-9, f"a 10 s window spans {xs[-1] - xs[0]} s")

    step("unticking the field leaves nothing plotted")
    driver.find_element(By.CSS_SELECTOR, "#plot-fields input[data-field='value']").click()
    check(plotted(driver) == {}, "no series")
    driver.find_element(By.CSS_SELECTOR, "#plot-fields input[data-field='value']").click()

    step("dark theme")
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    time.sleep(0.5)
    shot(driver, "plots-stripchart-dark.png")

    step("Close returns focus to the Plot button")
    driver.find_element(By.ID, "plot-close").click()
    check(not driver.find_element(By.ID, "plot-card").is_displayed(), "the card is hidden")
    active = driver.switch_to.active_element
    check(active.get_attribute("data-action") == "plot", "focus back on Plot")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    check(not errors, f"console errors: {errors}")


def main():
    driver = browser()
    try:
        main_flow(driver)
    finally:
        driver.quit()
    print("ok", flush=True)


if __name__ == "__main__":
    main()

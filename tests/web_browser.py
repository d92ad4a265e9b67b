"""Drives speedrelay's web page in headless chromium (for tests/web.rs).

Argument: one JSON object (see tests/web.rs). Prints one line per step and
exits non-zero with the reason when a check fails; screenshots go to
`artifacts`. Chromedriver is given by path, so Selenium never downloads.
"""

import json
import os
import socket
import sys
import time

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait
from selenium_common import check, headless_chromium, step

ARGS = json.loads(sys.argv[1])
ART = ARGS["artifacts"]


def browser():
    return headless_chromium(ARGS["chromium"], ARGS["chromedriver"])


def wait(driver, what, cond, timeout=15):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond(d))
    except TimeoutException:
        shot(driver, "web-failure.png")
        raise AssertionError("timed out waiting for " + what) from None


def shot(driver, name):
    path = os.path.join(ART, name)
    driver.save_screenshot(path)
    print("screenshot:", path, flush=True)


def row(driver, name):
    found = driver.find_elements(By.CSS_SELECTOR, f'#rows tr[data-name="{name}"]')
    return found[0] if found else None


def cell(driver, name, col):
    r = row(driver, name)
    return r.find_element(By.CSS_SELECTOR, f'td[data-col="{col}"]').text if r else None


def visible_text(driver, element_id):
    e = driver.find_element(By.ID, element_id)
    return e.text if e.is_displayed() else ""


def send_records(port):
    """Sends the test's record ARGS["records"] times to `port` on loopback."""
    payload = bytes.fromhex(ARGS["payload_hex"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(ARGS["records"]):
            s.sendto(payload, ("127.0.0.1", port))


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def main_flow(driver):
    url = ARGS["url"]
    step("the page loads and shows the registered channel")
    driver.get(url)
    base = ARGS["existing"]
    wait(driver, f"row {base}", lambda d: row(d, base))
    status = row(driver, base).find_element(By.CSS_SELECTOR, ".badge").text
    check(status == "active", f"{base} is {status!r}")
    check(driver.find_element(By.TAG_NAME, "main") is not None, "a main landmark")
    port = driver.find_element(By.ID, "f-port")
    wait(driver, "a suggested port", lambda d: port.get_attribute("value"))
    suggested = int(port.get_attribute("value"))
    lo, hi = ARGS["ports"]
    check(lo <= suggested <= hi, f"suggested port {suggested} in the relay's range {lo}-{hi}")
    errors = console_errors(driver)
    check(not errors, f"console errors on load: {errors}")

    step("a server error appears next to the field it is about")
    driver.find_element(By.ID, "f-name").send_keys("webtest")
    port.clear()
    port.send_keys(str(ARGS["existing_port"]))
    driver.find_element(By.ID, "f-schema-file").send_keys(ARGS["schema_file"])
    driver.find_element(By.ID, "submit").click()
    wait(driver, "the port-in-use error", lambda d: visible_text(d, "f-port-error"))
    text = visible_text(driver, "f-port-error")
    check(base in text, f"the port error names the channel holding it: {text!r}")
    check(driver.switch_to.active_element.get_attribute("id") == "f-port", "focus on the port field")
    check(port.get_attribute("aria-invalid") == "true", "the port field is marked invalid")
    check(row(driver, "webtest") is None, "nothing registered")
    shot(driver, "web-error.png")

    driver.find_element(By.ID, "src-path").click()
    driver.find_element(By.ID, "f-schema-path").send_keys("../outside.avsc")
    driver.find_element(By.ID, "f-port-error")
    port.clear()
    port.send_keys(str(suggested))
    driver.find_element(By.ID, "submit").click()
    wait(driver, "the schema path error", lambda d: visible_text(d, "f-schema-path-error"))
    check(not visible_text(driver, "f-port-error"), "the old port error is gone")
    check(row(driver, "webtest") is None, "nothing registered")

    step("registering through the form (keyboard only) adds the channel")
    driver.find_element(By.ID, "src-file").click()
    driver.find_element(By.ID, "f-factor").send_keys("2")
    Select(driver.find_element(By.ID, "f-algorithm")).select_by_value("average")
    # Enter in a text field submits the form.
    driver.find_element(By.ID, "f-name").send_keys(Keys.ENTER)
    wait(driver, "row webtest", lambda d: row(d, "webtest"))
    check(cell(driver, "webtest", "records") == "0", "no records yet")
    check("registered" in visible_text(driver, "form-status"), "a success message")
    check(driver.find_element(By.ID, "f-name").get_attribute("value") == "", "the form was reset")
    wait(
        driver,
        "a new port suggestion",
        lambda d: port.get_attribute("value") and int(port.get_attribute("value")) != suggested,
    )

    step("records sent to its port show in the table")
    send_records(suggested)
    want = str(ARGS["records"])
    wait(driver, f"{want} records in the table", lambda d: cell(d, "webtest", "records") == want)
    wait(driver, "a records/s figure", lambda d: cell(d, "webtest", "rate") not in ("–", None))
    check(cell(driver, "webtest", "invalid") == "0", "no invalid records")
    shot(driver, "web.png")
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    bg = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    check(bg != "rgb(244, 246, 248)", f"the dark scheme changes the background ({bg})")
    shot(driver, "web-dark.png")
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "light"}]},
    )

    step("the schema is shown on demand, and Escape returns the focus")
    button = row(driver, "webtest").find_element(By.CSS_SELECTOR, 'button[aria-label^="Show the schema"]')
    button.click()
    wait(driver, "the schema text", lambda d: '"fields"' in d.find_element(By.ID, "schema-text").text)
    check('"sine_wave"' in driver.find_element(By.ID, "schema-text").text, "the channel's schema")
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(driver, "the dialog to close", lambda d: not d.find_element(By.ID, "schema-dialog").is_displayed())
    check(driver.switch_to.active_element == button, "focus back on the Schema button")

    step("removal asks first: Cancel keeps the channel")
    remove = row(driver, "webtest").find_element(By.CSS_SELECTOR, 'button[data-action="remove"]')
    remove.click()
    dialog = driver.find_element(By.ID, "confirm-dialog")
    wait(driver, "the confirmation", lambda d: dialog.is_displayed())
    check("webtest" in dialog.text, "the confirmation names the channel")
    check(driver.switch_to.active_element.get_attribute("id") == "confirm-cancel", "focus on Cancel")
    shot(driver, "web-confirm.png")
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait(driver, "the confirmation to close", lambda d: not dialog.is_displayed())
    check(row(driver, "webtest") is not None, "Cancel kept the channel")
    check(driver.switch_to.active_element == remove, "focus back on Remove")

    step("removal confirmed: the channel disappears")
    remove.click()
    wait(driver, "the confirmation", lambda d: dialog.is_displayed())
    driver.find_element(By.ID, "confirm-ok").click()
    wait(driver, "row webtest to go", lambda d: row(d, "webtest") is None)
    check(row(driver, base) is not None, f"{base} is still listed")
    wait(driver, "the announcement", lambda d: "removed" in d.find_element(By.ID, "announce").get_attribute("textContent"))

    # Only the deliberate 400/409 answers may appear, as failed loads.
    unexpected = [
        e
        for e in console_errors(driver)
        if not ("Failed to load resource" in e["message"] and ("400" in e["message"] or "409" in e["message"]))
    ]
    check(not unexpected, f"console errors: {unexpected}")


def token_flow(driver):
    step("with a token: the page asks for it, refuses a wrong one, keeps the right one")
    driver.get(ARGS["token_url"])
    dialog = driver.find_element(By.ID, "token-dialog")
    wait(driver, "the token dialog", lambda d: dialog.is_displayed())
    field = driver.find_element(By.ID, "f-token")
    check(driver.switch_to.active_element == field, "focus in the token field")
    field.send_keys("not-the-token", Keys.ENTER)
    wait(driver, "the refusal", lambda d: visible_text(d, "f-token-error"))
    check(dialog.is_displayed(), "still asking")
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    shot(driver, "web-token-dark.png")
    field.send_keys(ARGS["token"], Keys.ENTER)
    wait(driver, "the token dialog to close", lambda d: not dialog.is_displayed())
    wait(driver, "row " + ARGS["token_existing"], lambda d: row(d, ARGS["token_existing"]))
    stored = driver.execute_script("return sessionStorage.getItem('speedrelay.token')")
    check(stored == ARGS["token"], "the token is kept in sessionStorage")
    driver.refresh()
    wait(driver, "the table after a reload", lambda d: row(d, ARGS["token_existing"]))
    check(not driver.find_element(By.ID, "token-dialog").is_displayed(), "no second prompt after a reload")


def field_error(driver, input_id, what):
    """Waits for the error next to `input_id`; checks it has the focus and
    is marked invalid, and that no other destination field shows an error."""
    wait(driver, what, lambda d: visible_text(d, input_id + "-error"))
    check(driver.switch_to.active_element.get_attribute("id") == input_id, f"focus on {input_id}")
    check(driver.find_element(By.ID, input_id).get_attribute("aria-invalid") == "true", f"{input_id} marked invalid")
    for other in ("f-full-rate", "f-decimated"):
        if other != input_id:
            check(not visible_text(driver, other + "-error"), f"no error next to {other}")
    return visible_text(driver, input_id + "-error")


def submit_outputs(driver, full_rate, decimated):
    for input_id, text in (("f-full-rate", full_rate), ("f-decimated", decimated)):
        field = driver.find_element(By.ID, input_id)
        field.clear()
        field.send_keys(text)
    driver.find_element(By.ID, "submit").click()


def outputs_flow(driver):
    step("the Outputs fields are labelled and described")
    driver.get(ARGS["url"])
    wait(driver, "row " + ARGS["existing"], lambda d: row(d, ARGS["existing"]))
    port = driver.find_element(By.ID, "f-port")
    wait(driver, "a suggested port", lambda d: port.get_attribute("value"))
    suggested = int(port.get_attribute("value"))
    for input_id in ("f-full-rate", "f-decimated"):
        field = driver.find_element(By.ID, input_id)
        label = driver.find_element(By.CSS_SELECTOR, f'label[for="{input_id}"]').text
        check("destinations" in label, f"{input_id} has a label: {label!r}")
        described = field.get_attribute("aria-describedby").split()
        check("f-outputs-hint" in described and input_id + "-error" in described, f"{input_id} described by {described}")

    step("a destination without a port: the error is next to that field, nothing is sent")
    bad = ARGS["bad_name"]
    driver.find_element(By.ID, "f-name").send_keys(bad)
    driver.find_element(By.ID, "f-schema-file").send_keys(ARGS["schema_file"])
    # Decimation on: the relay opens decimated destinations only then.
    driver.find_element(By.ID, "f-factor").send_keys(str(ARGS["factor"]))
    submit_outputs(driver, "127.0.0.1", "")
    text = field_error(driver, "f-full-rate", "the full-rate error")
    check("127.0.0.1" in text and "port" in text, f"the error names the entry and the port: {text!r}")
    check(row(driver, bad) is None, "nothing registered")

    step("a port out of range in the decimated field: the error moves there")
    submit_outputs(driver, "127.0.0.1:9", "127.0.0.1:70000")
    text = field_error(driver, "f-decimated", "the decimated error")
    check("70000" in text, f"the error names the entry: {text!r}")
    shot(driver, "web-outputs-error.png")

    step("a destination the relay refuses (400 config.outputs) is shown next to its field")
    submit_outputs(driver, "127.0.0.1:9", "[fe80::1]:5000")
    text = field_error(driver, "f-decimated", "the relay's error about the decimated destination")
    check("fe80::1" in text, f"the relay's message names the destination: {text!r}")
    check(row(driver, bad) is None, "nothing registered")

    step("registering with full-rate and decimated destinations")
    name = ARGS["name"]
    field = driver.find_element(By.ID, "f-name")
    field.clear()
    field.send_keys(name)
    submit_outputs(driver, ARGS["full_rate"], ARGS["decimated"])
    wait(driver, "row " + name, lambda d: row(d, name))
    check(not visible_text(driver, "f-decimated-error"), "the old error is gone")
    check(driver.find_element(By.ID, "f-full-rate").get_attribute("value") == "", "the form was reset")

    step("records sent to its port are counted")
    send_records(suggested)
    want = str(ARGS["records"])
    wait(driver, f"{want} records in the table", lambda d: cell(d, name, "records") == want)
    unexpected = [
        e
        for e in console_errors(driver)
        if not ("Failed to load resource" in e["message"] and "400" in e["message"])
    ]
    check(not unexpected, f"console errors: {unexpected}")


def main():
    driver = browser()
    try:
        if ARGS.get("flow") == "outputs":
            outputs_flow(driver)
        else:
            main_flow(driver)
            token_flow(driver)
    finally:
        driver.quit()
    print("ok", flush=True)


if __name__ == "__main__":
    main()

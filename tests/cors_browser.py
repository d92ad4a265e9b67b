"""A page on another origin calls speedrelay's API with fetch() in headless
chromium (for tests/speeddata.rs): CORS as a browser enforces it.

Argument: one JSON object (see tests/speeddata.rs). The script serves a small
page from two origins on loopback with Python's http.server: the listed one
(`listed_port`, the relay runs with --cors-origin for it) and an unlisted
one (a port of its own). From the listed origin the page registers a
channel, lists the channels and deletes it; from the unlisted one its
fetch() must fail. After each step it prints `await: STEP` and waits for
`go` on stdin, so the test can check the step's effect through the API
(anything else, or end of input, stops it). Prints `step:` lines, `ok` at
the end, and exits non-zero with the reason when a check fails.
"""

import functools
import http.server
import json
import os
import sys
import tempfile
import threading

from selenium_common import check, headless_chromium, step

ARGS = json.loads(sys.argv[1])

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>SpeedData dashboard stand-in</title></head>
<body>
<p id="state">loading</p>
<script>
const API = new URLSearchParams(location.search).get("api");
async function call(method, path, body) {
  const init = { method: method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(API + path, init);
  return { status: r.status, body: await r.json() };
}
window.relay = {
  register: (body) => call("POST", "/api/v1/channels", body),
  list: () => call("GET", "/api/v1/channels"),
  remove: (name) => call("DELETE", "/api/v1/channels/" + encodeURIComponent(name)),
};
document.getElementById("state").textContent = "ready";
</script>
</body>
</html>
"""


def checkpoint(name):
    """Lets the test check the relay; stops unless it answers `go`."""
    print("await:", name, flush=True)
    answer = sys.stdin.readline().strip()
    if answer != "go":
        raise SystemExit(f"stopped at {name}: the test answered {answer!r}")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(port, root):
    handler = functools.partial(QuietHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def browser():
    driver = headless_chromium(ARGS["chromium"], ARGS["chromedriver"])
    driver.set_script_timeout(30)
    return driver


def open_page(driver, origin):
    driver.get(f"{origin}/index.html?api={ARGS['api']}")
    state = driver.find_element("id", "state").text
    check(state == "ready", f"the page at {origin} did not start: {state!r}")


def run(driver, action, *args):
    """Runs window.relay[action](*args) in the page: {ok, status, body} or
    {ok: false, error} when fetch() rejected."""
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const action = arguments[0];
        const args = Array.prototype.slice.call(arguments, 1, arguments.length - 1);
        window.relay[action](...args).then(
          (r) => done({ ok: true, status: r.status, body: r.body }),
          (e) => done({ ok: false, error: e.name + ": " + e.message }));
        """,
        action,
        *args,
    )


def names(result):
    return sorted(c["name"] for c in result["body"]["channels"])


def main():
    root = tempfile.mkdtemp(prefix="speedrelay-page-")
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write(PAGE)
    listed = serve(ARGS["listed_port"], root)
    unlisted = serve(0, root)
    listed_origin = f"http://127.0.0.1:{ARGS['listed_port']}"
    unlisted_origin = f"http://127.0.0.1:{unlisted.server_address[1]}"
    name = ARGS["name"]
    body = {"name": name, "port": ARGS["port"], "schema": ARGS["schema"]}
    driver = browser()
    try:
        step(f"the page on the listed origin {listed_origin} registers a channel")
        open_page(driver, listed_origin)
        r = run(driver, "register", body)
        check(r["ok"], f"fetch failed from the listed origin: {r}")
        check(r["status"] == 201, f"register answered {r}")
        check(r["body"].get("name") == name, f"register answered {r}")
        checkpoint("registered")

        step("it lists the channels and reads the answer")
        r = run(driver, "list")
        check(r["ok"] and r["status"] == 200, f"list answered {r}")
        check(names(r) == [name], f"the list shows {names(r)}")

        step("it deletes the channel")
        r = run(driver, "remove", name)
        check(r["ok"] and r["status"] == 200, f"delete answered {r}")
        r = run(driver, "list")
        check(r["ok"] and names(r) == [], f"after delete the list shows {r}")
        checkpoint("deleted")

        step(f"the same page on the unlisted origin {unlisted_origin}: the browser blocks it")
        open_page(driver, unlisted_origin)
        blocked = dict(body, name=ARGS["blocked_name"])
        r = run(driver, "register", blocked)
        check(not r["ok"], f"register from an unlisted origin was let through: {r}")
        check(r["error"].startswith("TypeError"), f"not a network error: {r}")
        r = run(driver, "list")
        check(not r["ok"], f"the list was readable from an unlisted origin: {r}")
        r = run(driver, "remove", ARGS["blocked_name"])
        check(not r["ok"], f"delete from an unlisted origin was let through: {r}")
        console = [e["message"] for e in driver.get_log("browser")]
        for message in console:
            print("console:", message, flush=True)
        # Refused by CORS (the preflight), not by a relay that is down.
        check(
            any(unlisted_origin in m and "blocked by CORS policy" in m and "preflight" in m for m in console),
            "the console shows no CORS refusal of the preflight",
        )
        checkpoint("blocked")
    finally:
        driver.quit()
        listed.shutdown()
        unlisted.shutdown()
    print("ok", flush=True)


if __name__ == "__main__":
    main()

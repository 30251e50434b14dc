"""Take docs/_static/observe.png: the live tree page of the demo's tree, in headless Chromium.

    .venv/bin/python scripts/observe_screenshot.py [OUT.png]

Runs the demo's trees (greentree.websocket.demo_support.Demo) with a few clients in this process,
injects a fault every 0.4 s (then 0.1 s while the page loads), serves greentree.observe on a free loopback port and lets Debian's
chromium (nothing is downloaded) load the page and screenshot it.  The PNG is reduced to a
palette (Pillow, from the test extra) to stay small.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import gevent
from gevent import subprocess

from greentree.observe import serve
from greentree.websocket.demo_support import Demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "_static", "observe.png")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    demo = Demo(clients=6, seed=11)
    demo.start()
    server = serve(demo.root)
    profile = tempfile.mkdtemp(prefix="greentree-shot-")

    gap = [0.4]

    def faults():
        k = 0
        while True:
            gevent.sleep(gap[0])
            demo.inject(demo.FAULTS[k % 3])  # crashes (senders, server and client connections), no churn
            k += 1

    injector = gevent.spawn(faults)
    try:
        gevent.sleep(3.0)  # some restarts and recent exits to show
        gap[0] = 0.1  # and a few while the page polls, to catch a restart's highlight
        raw = out + ".raw.png"
        subprocess.run([
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1180,860", "--virtual-time-budget=6000",
            f"--screenshot={raw}", f"http://127.0.0.1:{server.server_port}/?depth=2",
        ], check=True, capture_output=True, timeout=120)
    finally:
        injector.kill()
        server.stop()
        demo.stop()
        shutil.rmtree(profile, ignore_errors=True)
    from PIL import Image

    with Image.open(raw) as img:
        img.convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    os.unlink(raw)
    print(f"{out}: {os.path.getsize(out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screenshot of the plain ``napari-deblur demo`` on a 1366 x 768 screen, as a user sees it.

Starts a virtual X screen (Xvfb), runs ``napari-deblur demo`` exactly as a user
would, waits until the demo's results are shown, grabs the whole screen and
closes the demo.

Usage::

    python tools/screenshot_demo.py docs/images/demo-camera-shake.png [--sample defocus_ramp] [--wait 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SCREEN = "1366x768x24"


def _free_display() -> str:
    for number in range(90, 200):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return f":{number}"
    raise RuntimeError("no free X display number between :90 and :199")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--sample", default="camera_shake", help="demo sample (default: %(default)s)")
    parser.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to let the demo's jobs finish before the grab (default: %(default)s)",
    )
    args = parser.parse_args()

    from PIL import ImageGrab

    display = _free_display()
    server = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", SCREEN], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    demo = None
    try:
        time.sleep(1.0)
        env = {**os.environ, "DISPLAY": display}
        env.pop("WAYLAND_DISPLAY", None)
        demo = subprocess.Popen(["napari-deblur", "demo", "--sample", args.sample], env=env)
        time.sleep(args.wait)
        if demo.poll() is not None:
            sys.stderr.write(f"the demo ended early with status {demo.returncode}\n")
            return 1
        args.output.parent.mkdir(parents=True, exist_ok=True)
        ImageGrab.grab(xdisplay=display).save(args.output)
        print(args.output)
        return 0
    finally:
        if demo is not None and demo.poll() is None:
            demo.terminate()
            demo.wait(timeout=30)
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())

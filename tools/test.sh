#!/usr/bin/env bash
# Install napari-deblur with its test extras and run the whole test suite.
# GUI tests open real napari windows: without a display (Linux), they run under Xvfb.
# Extra arguments go to pytest, e.g.  bash tools/test.sh -k wiener
set -euo pipefail
cd "$(dirname "$0")/.."

# The CPU build of torch; an unpinned torch would pull several GB of CUDA wheels.
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".[testing]"

if [ "$(uname -s)" = "Linux" ] && [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
    if ! command -v xvfb-run >/dev/null 2>&1; then
        echo "No display and no xvfb-run: installing Xvfb and Mesa (Debian/Ubuntu)..." >&2
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq xvfb libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 \
            libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-randr0 \
            libxcb-render-util0 libxcb-xinerama0 libxcb-image0 libdbus-1-3 >/dev/null
    fi
    exec xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest "$@"
fi
exec python -m pytest "$@"

"""One lent-GPU call: two full Wiener-net retrainings side by side, sized to fit the call.

    python -m training.checks.gpu_wiener_net_session OUT_DIR [--budget-seconds 360] [--dry-run]

Candidates (README, issue 5): ``L``, the shipped widths, and ``W``, wider levels
(48, 64, 96, 128); both run the three-stage command from scratch with larger
batches than on the CPU (48 crops a step in stage 1, 24 in stages 2 and 3).
First both time a few steps of stage 1 and of stage 3 at the same time (so
the timing includes their sharing of the GPU; the second half of 60 steps, after the
warm-up: in the first session that ran it, 30 steps with the warm-up read 0.12-0.17 s a
step where the runs then took 0.08 s, and the runs came out at 1200 steps, not 2000);
the slower candidate's times then set the steps of both, so that the two runs take the same schedule and
end within ``--budget-seconds`` of stepping (stage 2 and 3 each get 0.3 x
the steps of stage 1, as 1200 / 4000 in the CPU command). The exact commands
are printed and written to ``OUT_DIR/commands.txt``: they reproduce the
weights on their own. Last, the time of ``wiener_net_deconvolve`` on a
4 MP plane is measured with each candidate's weights (the bar: 100 ms), on the scene and
with the timing of ``benchmarks/gpu_speed_benchmark.py``.
``--dry-run`` shrinks everything to run in a minute on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CANDIDATES = {"L": "32,48,64,96", "W": "48,64,96,128"}
STAGE1_BATCH = 48
TUNING_BATCH = 24
TUNING_SHARE = 0.3

TIMING_SNIPPET = r"""
import json, sys, time, torch
from dataclasses import replace
from pathlib import Path
from training import wiener_net as t
widths, device, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
small = dict(kernel_pool_size=64, n_dead_leaves=8, validation_batches=1, steps=2 * steps, log_every=steps,
             device=device, threads=6, widths=tuple(int(w) for w in widths.split(",")))
times = {}
for name, config in (("stage1", t.WienerNetTrainingConfig(batch=%(stage1)d, **small)),
                     ("stage3", replace(t.correction_tuning_config(t.WienerNetTrainingConfig(), "x"),
                                        batch=%(tuning)d, init=None, **small))):
    t.train_wiener_net(config, Path(out) / f"timing_{widths}_{name}.pt")
    # The second half only: the first steps include cuDNN's autotuning and the warm-up.
    times[name] = (config.history[-1]["minutes"] - config.history[-2]["minutes"]) * 60 / steps
print(json.dumps(times))
""" % {"stage1": STAGE1_BATCH, "tuning": TUNING_BATCH}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=360.0,
        help="seconds of training steps per run (pools, validation and timing come on top)",
    )
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "src")]))
    timing_steps = 2 if args.dry_run else 30
    timings = [
        subprocess.Popen(
            [sys.executable, "-c", TIMING_SNIPPET, widths, device, str(timing_steps), str(args.out)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for widths in CANDIDATES.values()
    ]
    seconds = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in timings]
    print("seconds per step (with the two timings sharing the device):", seconds, flush=True)
    stage1 = max(s["stage1"] for s in seconds)
    stage3 = max(s["stage3"] for s in seconds)
    # A first-stage step costs stage1; each one brings 2 x TUNING_SHARE tuning steps.
    steps = int(args.budget_seconds / (stage1 + 2 * TUNING_SHARE * stage3)) // 400 * 400
    steps = 8 if args.dry_run else max(steps, 400)
    tuning_steps = max(int(TUNING_SHARE * steps) // 100 * 100, 4 if args.dry_run else 100)
    stage1_batch, tuning_batch = (4, 2) if args.dry_run else (STAGE1_BATCH, TUNING_BATCH)
    commands = {}
    for name, widths in CANDIDATES.items():
        commands[name] = [
            sys.executable,
            "-m",
            "training",
            "wiener-net",
            "--device",
            device,
            "--threads",
            "6",
            "--seed",
            "0",
            "--steps",
            str(steps),
            "--batch",
            str(stage1_batch),
            "--tuning-steps",
            str(tuning_steps),
            "--tuning-batch",
            str(tuning_batch),
            "--log-every",
            str(max(steps // 8, 1)),
            "--widths",
            widths,
            "--out",
            str(args.out / f"wiener_net_{name}.pt"),
        ]
    text = "\n".join(" ".join(c) for c in commands.values())
    (args.out / "commands.txt").write_text(text + "\n")
    print(text, flush=True)
    started = time.perf_counter()
    runs = {
        name: subprocess.Popen(
            command, env=env, stdout=open(args.out / f"train_{name}.log", "w"), stderr=subprocess.STDOUT
        )
        for name, command in commands.items()
    }
    for name, run in runs.items():
        print(name, "exit", run.wait(), f"after {time.perf_counter() - started:.0f} s", flush=True)
    subprocess.run(
        [sys.executable, "-c", SPEED_SNIPPET, str(args.out), device, "256" if args.dry_run else "2048"],
        env=env,
    )
    return 0


SPEED_SNIPPET = r"""
import statistics, sys, torch
from pathlib import Path
sys.path.insert(0, str(Path.cwd() / "benchmarks"))
from gpu_speed_benchmark import _scene, _timed
import napari_deblur.engine.methods.wiener_net as wn
out, device, side = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
name_of_device = torch.cuda.get_device_name() if device == "cuda" else "cpu"
image, psf = _scene(side)
for name in ("L", "W"):
    path = out / f"wiener_net_{name}.pt"
    if not path.exists():
        continue
    model = wn.wiener_net_from_weights(torch.load(path, map_location="cpu", weights_only=True))
    model = model.to(device, memory_format=torch.channels_last).eval()
    wn.load_wiener_net = lambda device, model=model: model
    times = _timed(lambda: wn.wiener_net_deconvolve(image, psf, device=device), 7)
    print(f"{name}: wiener_net_deconvolve {side} x {side} on {name_of_device}: median "
          f"{1000 * statistics.median(times):.0f} ms, fastest {1000 * min(times):.0f} ms", flush=True)
"""

if __name__ == "__main__":
    sys.exit(main())

"""Judge a Wiener-net candidate against the shipped weights by one fixed rule.

Runs ``wiener_net_heldout_check.py OLD.pt NEW.pt --residual-correction`` on 15 held-out draws of
the train sources, writes
each draw's table into ``--out``, and prints the group means, the worst true-kernel rows and the
verdict:

- T: true kernel, noise 0.01 (seeds 2000-2004) and noise 0.03 (seeds 2001-2003);
- W: kernel 0.8 px too wide, noise 0.01, seeds 2000-2004; C: tails cut, seeds 2000 and 2003.

Ship only if (a) the W mean rises by at least 0.30 dB, (b) the T mean falls by at most 0.05 dB at
each noise, (c) no T row falls by more than 0.25 dB, (d) the C mean falls by at most 0.15 dB, and (e)
the T crops lost (network + correction below the best-SNR Wiener filter) rise by at most 10 %.
Means are over the 14 rows of each draw, then over the draws. A judge of two weight files with
one network pass takes about 10 minutes on 2 CPUs.

    python -m training.checks.wiener_net_candidate_judge OLD.pt NEW.pt --out DIR [--ensemble N]
    python -m training.checks.wiener_net_candidate_judge OLD.pt NEW.pt --out DIR --summary-only
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

DRAWS = (
    [(f"T0.01_{s}", ["--seed", str(s), "--noise", "0.01"]) for s in range(2000, 2005)]
    + [(f"T0.03_{s}", ["--seed", str(s), "--noise", "0.03"]) for s in range(2001, 2004)]
    + [(f"W_{s}", ["--seed", str(s), "--noise", "0.01", "--kernel-error", "wide"]) for s in range(2000, 2005)]
    + [(f"C_{s}", ["--seed", str(s), "--noise", "0.01", "--kernel-error", "tails-cut"]) for s in (2000, 2003)]
)
TRUE_KERNEL_GROUPS = ("T0.01", "T0.03")
WIDE_GAIN_MIN = 0.30
TRUE_MEAN_FALL_MAX = 0.05
TRUE_ROW_FALL_MAX = 0.25
TAILS_CUT_FALL_MAX = 0.15
TRUE_LOST_RISE_MAX = 0.10


def corrected_rows(table: str) -> list[tuple[str, float, int, float, int]]:
    """``(row, old gap, old lost, new gap, new lost)`` of the "+ residual correction" columns.

    ``table`` is the markdown printed by ``wiener_net_heldout_check.py OLD NEW --residual-correction``:
    per weight file three columns (gap, lost, worst) for the network alone, then three after the
    correction.
    """
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 14 or cells[0].startswith("held-out") or cells[1].startswith("-"):
            continue
        rows.append(
            (
                cells[0],
                float(cells[5]),
                int(cells[6].split("/")[0]),
                float(cells[11]),
                int(cells[12].split("/")[0]),
            )
        )
    return rows


def verdict(tables: dict[str, str]) -> tuple[list[str], bool]:
    """Report lines and the decision for ``{draw name: table}`` (names as in :data:`DRAWS`)."""
    groups: dict[str, list] = {}
    for name, table in tables.items():
        groups.setdefault(name.rsplit("_", 1)[0], []).append((name, corrected_rows(table)))
    lines = ["| group | draws | old mean (lost) | new mean (lost) | change |", "|---|---:|---:|---:|---:|"]
    summary = {}
    for group, draws in groups.items():
        old = statistics.mean(statistics.mean(r[1] for r in rows) for _, rows in draws)
        new = statistics.mean(statistics.mean(r[3] for r in rows) for _, rows in draws)
        old_lost = sum(r[2] for _, rows in draws for r in rows)
        new_lost = sum(r[4] for _, rows in draws for r in rows)
        summary[group] = (old, new, old_lost, new_lost)
        lines.append(
            f"| {group} | {len(draws)} | {old:+.2f} ({old_lost}) | {new:+.2f} ({new_lost}) "
            f"| {new - old:+.2f} |"
        )
    falls = sorted(
        (r[3] - r[1], name, r[0])
        for group in TRUE_KERNEL_GROUPS
        for name, rows in groups[group]
        for r in rows
    )
    lines += ["", "worst true-kernel rows (new - old):"]
    lines += [f"  {change:+.2f}  {name}  {row}" for change, name, row in falls[:6]]
    lost_old = sum(summary[g][2] for g in TRUE_KERNEL_GROUPS)
    lost_new = sum(summary[g][3] for g in TRUE_KERNEL_GROUPS)
    checks = {
        f"(a) W mean rises by >= {WIDE_GAIN_MIN:.2f} dB": summary["W"][1] - summary["W"][0] >= WIDE_GAIN_MIN,
        f"(b) T mean falls by <= {TRUE_MEAN_FALL_MAX:.2f} dB at each noise": all(
            summary[g][1] - summary[g][0] >= -TRUE_MEAN_FALL_MAX for g in TRUE_KERNEL_GROUPS
        ),
        f"(c) no T row falls by > {TRUE_ROW_FALL_MAX:.2f} dB": falls[0][0] >= -TRUE_ROW_FALL_MAX,
        f"(d) C mean falls by <= {TAILS_CUT_FALL_MAX:.2f} dB": (
            summary["C"][1] - summary["C"][0] >= -TAILS_CUT_FALL_MAX
        ),
        f"(e) T crops lost rise by <= {TRUE_LOST_RISE_MAX:.0%} ({lost_old} -> {lost_new})": (
            lost_new <= (1 + TRUE_LOST_RISE_MAX) * lost_old
        ),
    }
    lines.append("")
    lines += [("met    " if ok else "FAILED ") + text for text, ok in checks.items()]
    ship = all(checks.values())
    lines.append("SHIP" if ship else "DO NOT SHIP")
    return lines, ship


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the shipped weights (.pt)")
    parser.add_argument("new", help="the candidate (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the 15 draws' tables")
    parser.add_argument("--ensemble", type=int, default=1, help="network passes, as in the check script")
    parser.add_argument("--summary-only", action="store_true", help="judge the tables already in --out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    if not args.summary_only:
        for name, options in DRAWS:
            command = [
                sys.executable,
                "-m",
                "training.checks.wiener_net_heldout_check",
                args.old,
                args.new,
                "--residual-correction",
                "--ensemble",
                str(args.ensemble),
                *options,
            ]
            table = subprocess.run(command, check=True, capture_output=True, text=True, cwd=root).stdout
            (args.out / f"{name}.md").write_text(table)
            print(f"{name} done", file=sys.stderr, flush=True)
    tables = {name: (args.out / f"{name}.md").read_text() for name, _ in DRAWS}
    lines, ship = verdict(tables)
    print("\n".join(lines))
    return 0 if ship else 1


if __name__ == "__main__":
    sys.exit(main())

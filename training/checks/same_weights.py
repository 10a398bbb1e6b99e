"""Whether two weight files hold the same tensors, and if not, how far apart they are.

    python -m training.checks.same_weights SHIPPED.pt REMADE.pt

The files' bytes are not the measure: ``torch.save`` names the archive inside a
file after the file itself, so a training command run with ``--out`` elsewhere
writes other bytes even when every tensor is equal. Prints one line and exits 0
when every tensor is equal, else lists the tensors that differ and exits 1.
"""

from __future__ import annotations

import argparse
import sys

import torch


def compare(first: dict, second: dict) -> list[str]:
    """One line per difference: missing names, other shapes, or the largest absolute difference."""
    lines = [f"only in the first file: {name}" for name in first if name not in second]
    lines += [f"only in the second file: {name}" for name in second if name not in first]
    for name in first.keys() & second.keys():
        a, b = first[name], second[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            lines.append(f"{name}: {tuple(a.shape)} {a.dtype} against {tuple(b.shape)} {b.dtype}")
        elif not torch.equal(a, b):
            largest = (a.double() - b.double()).abs().max().item()
            lines.append(f"{name}: largest difference {largest:.3g}")
    return sorted(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    args = parser.parse_args(argv)
    first, second = (
        torch.load(path, map_location="cpu", weights_only=True) for path in (args.first, args.second)
    )
    differences = compare(first, second)
    if not differences:
        print(f"the same {len(first)} tensors")
        return 0
    print("\n".join(differences))
    return 1


if __name__ == "__main__":
    sys.exit(main())

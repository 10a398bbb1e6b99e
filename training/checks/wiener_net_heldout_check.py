"""Compare Wiener-net weight files on held-out crops of the train sources, scored like the benchmark.

Crops of the train split and dead leaves (seed 2000, never the eval split), 256 px, blurred by
valid convolution with camera-shake kernels from two size ranges, Gaussian noise 0.01; sources as
they are, all smoothed first (Gaussian of 1-4 px, as in training, or 4-8 px: very smooth scenes
such as fluorescence images, scored at 45 dB and more), procedural stationary textures, sparse
point sources (star fields, fluorescent beads), or procedural printed text (black glyphs on paper;
Wiener-net never trains on it); and the first two with the small kernels moved off the centre of
their box. (Tables made before the text rows existed have 12 rows, not 14, and their means are
over those 12; the other rows' crops are the same.) Each crop is scored without a border of 31 px (the largest kernel), as the benchmark
leaves out a kernel-wide border, against the Wiener filter with the best of the stack's SNRs for
that crop (chosen on the same interior). Prints a markdown table, then how many crops that filter
took from each SNR of the stack (the lowest, 9 dB, is the most regularised member the network gets).
The network runs as the engine runs it on this machine: its convolutions in bfloat16 on CPUs
with native bfloat16 unless ``NAPARI_DEBLUR_CPU_FLOAT32=1``. ``--residual-correction`` adds, per
weight file, the network followed by the engine's ``correct_by_residual`` (as
``wiener_net_deconvolve`` runs it); ``--seed`` draws other crops, kernels and noise; ``--noise``
sets its standard deviation. ``--kernel-error`` hands the Wiener filters and the network a wrong
kernel (the crops stay blurred by the true one), as a user's parametric or blindly estimated PSF
is wrong: ``wide`` is the true kernel blurred by a Gaussian of 0.8 px, ``tails-cut`` drops its
values under a fifth of its peak (blind estimates miss faint parts of a trajectory). The Wiener
reference still picks its SNR with the answer, so it backs off from a wrong kernel; the network
has to see the error for itself. ``--contrast C`` scales every sharp crop's deviations from its own
mean by ``C`` before the blur and the noise (0.15: a low-contrast scene such as a fundus photograph,
where noise 0.01 is about a quarter of the plane's standard deviation). ``--ensemble N`` runs every
network on N flipped or turned views of its input and averages them
(``wiener_net.apply_network_ensemble``; default 1, one pass, as every table before the ensemble came
was made; the engine's default is ``wiener_net.DEFAULT_ENSEMBLE``).

    python -m training.checks.wiener_net_heldout_check OLD.pt NEW.pt [--residual-correction] [--seed S]
        [--noise N] [--kernel-error {wide,tails-cut}] [--contrast C] [--ensemble N]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

KERNEL_SIZE = 31
CROPS = 16
PATCH = 256
NOISE = 0.01
BOX_HALF_WIDTHS = {"7-13": (3, 7), "23-31": (11, 16)}
OFF_CENTRE = (2, 5)
"""Off-centre rows: the 7-13 px kernels moved by 2-4 px along each axis inside the 31 px box
(their centre of mass then lies off the box centre, as with many measured PSFs and Levin's)."""


def heldout_sets(seed: int = 2000, noise_std: float = NOISE, contrast: float = 1.0):
    source_sets = {
        "as they are": {},
        "smoothed": {"smooth_fraction": 1.0},
        "smoothed 4-8 px": {"smooth_fraction": 1.0, "smooth_sigma_range": (4.0, 8.0)},
        "textures": {"n_textures": 16, "texture_fraction": 1.0},
        "point sources": {"n_point_fields": 16, "point_field_fraction": 1.0},
        "printed text": {"n_text_pages": 16, "text_fraction": 1.0},
    }
    for sources, options in source_sets.items():
        for label, half_widths in BOX_HALF_WIDTHS.items():
            yield heldout_set(
                f"{sources}, shake box {label} px", options, half_widths, seed, noise_std, contrast=contrast
            )
    for sources, options in list(source_sets.items())[:2]:
        yield heldout_set(
            f"{sources}, shake box 7-13 px moved 2-4 px off centre",
            options,
            BOX_HALF_WIDTHS["7-13"],
            seed,
            noise_std,
            off_centre=True,
            contrast=contrast,
        )


def heldout_set(
    name: str,
    sampler_options: dict,
    half_widths: tuple[int, int],
    seed: int,
    noise_std: float,
    off_centre: bool = False,
    contrast: float = 1.0,
):
    """``(name, sharp, blurred + noise, kernels)`` for one row, from ``seed``.

    ``contrast`` scales each crop about its mean before the blur (:func:`with_contrast`).
    """
    from napari_deblur.engine.physics.psf import random_motion_psf
    from training.kernels import embed
    from training.sources import PatchSampler
    from training.wiener_net import blur_valid

    rng = np.random.default_rng(seed)
    sampler = PatchSampler(PATCH + KERNEL_SIZE - 1, rng, n_dead_leaves=20, **sampler_options)
    big = with_contrast(torch.from_numpy(sampler.sample(CROPS)), contrast)

    def kernel() -> np.ndarray:
        k = embed(random_motion_psf(int(rng.integers(*half_widths)) * 2 + 1, rng=rng), KERNEL_SIZE)
        if off_centre:
            shift = rng.integers(*OFF_CENTRE, size=2) * rng.choice([-1, 1], size=2)
            k = np.roll(k, tuple(shift), axis=(0, 1))
        return k

    kernels = torch.from_numpy(np.stack([kernel() for _ in range(CROPS)]))
    sharp, blurred = blur_valid(big, kernels)
    noise = torch.randn(blurred.shape, generator=torch.Generator().manual_seed(seed - 1999))
    return name, sharp, blurred + noise_std * noise, kernels


def with_contrast(crops: torch.Tensor, contrast: float) -> torch.Tensor:
    """``(N, 1, H, W)`` crops with their deviations from each crop's own mean scaled by ``contrast``."""
    if contrast == 1.0:
        return crops
    mean = crops.mean(dim=(-2, -1), keepdim=True)
    return mean + contrast * (crops - mean)


KERNEL_ERRORS = ("wide", "tails-cut")
WIDE_KERNEL_SIGMA = 0.8
TAIL_FRACTION = 0.2


def wrong_kernels(kernels: torch.Tensor, error: str | None) -> torch.Tensor:
    """``(N, k, k)`` kernels as a user might get them wrong (``KERNEL_ERRORS``), each summing to 1."""
    if error is None:
        return kernels
    if error == "wide":
        from training.kernels import widen_kernels

        return widen_kernels(kernels, WIDE_KERNEL_SIGMA)
    if error == "tails-cut":
        peak = kernels.amax(dim=(-2, -1), keepdim=True)
        wrong = torch.where(kernels >= TAIL_FRACTION * peak, kernels, torch.zeros_like(kernels))
    else:
        raise ValueError(f"kernel error must be one of {KERNEL_ERRORS}, got {error!r}")
    return wrong / wrong.sum(dim=(-2, -1), keepdim=True)


def interior_psnr(x: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    from training.wiener_net import crop_psnr

    b = KERNEL_SIZE
    return crop_psnr(x[..., b:-b, b:-b], sharp[..., b:-b, b:-b])


def main(argv=None) -> None:
    from napari_deblur.engine.core.devices import cpu_bfloat16_is_fast
    from napari_deblur.engine.methods.wiener import WIENER_STACK_SNRS_DB, wiener_filter
    from napari_deblur.engine.methods.wiener_net import (
        ENSEMBLE_SIZES,
        apply_network_ensemble,
        correct_by_residual,
        wiener_net_features,
        wiener_net_from_weights,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="Wiener-net weight files (.pt)")
    parser.add_argument(
        "--residual-correction",
        action="store_true",
        help="also score each network followed by correct_by_residual",
    )
    parser.add_argument("--seed", type=int, default=2000, help="draw of crops, kernels and noise")
    parser.add_argument("--noise", type=float, default=NOISE, help="noise standard deviation")
    parser.add_argument(
        "--kernel-error",
        choices=KERNEL_ERRORS,
        help="deconvolve with a wrong kernel (the blur stays the true one)",
    )
    parser.add_argument(
        "--contrast",
        type=float,
        default=1.0,
        help="scale each sharp crop about its mean by this before the blur (default 1)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        choices=ENSEMBLE_SIZES,
        help="network passes over flipped or turned views, averaged (default: 1)",
    )
    args = parser.parse_args(argv)
    models = []
    for path in args.weights:
        state = torch.load(path, map_location="cpu", weights_only=True)
        models.append(wiener_net_from_weights(state).eval())
    snrs = torch.tensor(WIENER_STACK_SNRS_DB)
    bfloat16 = cpu_bfloat16_is_fast(torch.device("cpu"))  # as the engine runs the network here
    variants = [(path, False) for path in args.weights]
    if args.residual_correction:
        variants = [(path, corrected) for path in args.weights for corrected in (False, True)]
    given = f", kernel {args.kernel_error}" if args.kernel_error else ""
    given += f", contrast {args.contrast:g}" if args.contrast != 1.0 else ""
    given += f", {args.ensemble} network passes" if args.ensemble > 1 else ""
    header = [
        f"held-out crops ({CROPS}, noise {args.noise:g}, seed {args.seed}{given}, interior)",
        "Wiener, best SNR",
    ]
    for path, corrected in variants:
        label = f"{path} + residual correction" if corrected else path
        header += [f"{label}: net - Wiener", "lost", "worst"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    picks = torch.zeros(len(snrs), dtype=torch.long)
    with torch.no_grad():
        for name, sharp, blurred, true_kernels in heldout_sets(args.seed, args.noise, args.contrast):
            kernels = wrong_kernels(true_kernels, args.kernel_error)
            stack = wiener_filter(blurred, kernels, snrs)[:, :, 0]
            member_psnrs = torch.stack(
                [interior_psnr(stack[:, i : i + 1], sharp) for i in range(stack.shape[1])], 1
            )
            oracle = member_psnrs.amax(1)
            picks += member_psnrs.argmax(1).bincount(minlength=len(snrs))
            features, mean, scale = wiener_net_features(blurred, kernels, snrs)
            row = [name, f"{oracle.mean():.2f}"]
            for model in models:
                restored = (
                    apply_network_ensemble(model, features, args.ensemble, bfloat16=bfloat16) * scale + mean
                )
                outputs = [restored]
                if args.residual_correction:
                    outputs.append(correct_by_residual(blurred, restored, kernels))
                for output in outputs:
                    gap = interior_psnr(output, sharp) - oracle
                    row += [f"{gap.mean():+.2f}", f"{int((gap < 0).sum())}/{CROPS}", f"{gap.min():+.2f}"]
            print("| " + " | ".join(row) + " |", flush=True)
    print("\n" + snr_pick_line(picks, snrs))


def snr_pick_line(picks: torch.Tensor, snrs: torch.Tensor) -> str:
    """How many crops the best-SNR Wiener filter took from each stack member (``picks[i]``: member ``i``)."""
    counts = ", ".join(f"{snr:g} dB: {int(n)}" for snr, n in zip(snrs.tolist(), picks) if n)
    return f"Crops per SNR picked by the best-SNR Wiener filter ({int(picks.sum())} crops): {counts}"


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

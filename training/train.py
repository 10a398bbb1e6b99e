"""Retrain the learned models: ``python -m training MODEL [options]``, from the repository root.

Shipped models: ``wiener-net``, ``wiener-net-3d``, ``blurmap`` and ``region-selector`` (labels
cached under ``--cache``); their weights go to the package's ``engine/nets/weights/``
folder by default (the files the engine loads) and their training reports to
``training/reports/``. Baselines: ``blurmap --baseline`` (the paper's
network) and ``gwis-level`` (the blur map fine-tuned on GWIS labels; run after
``blurmap``); their weights and reports go to ``training/weights/``. With
``--out`` the report goes beside the weights. Runs are seeded and
reproducible on the same machine and versions.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

PROG = "python -m training"

REPORTS_DIR = Path(__file__).resolve().parent / "reports"
"""Training reports of the shipped weights (the package ships short cards instead)."""


def _default_weights_path(filename: str) -> Path:
    """The shipped weights file ``filename`` in the package's ``engine/nets/weights/`` folder."""
    return Path(str(resources.files("napari_deblur.engine.nets").joinpath("weights", filename)))


def _report_path(weights: Path) -> Path:
    """Where the report of ``weights`` goes: ``training/reports/`` for shipped weights, else beside them."""
    shipped = _default_weights_path(weights.name)
    if weights.resolve() == shipped.resolve():
        REPORTS_DIR.mkdir(exist_ok=True)
        return REPORTS_DIR / weights.with_suffix(".md").name
    return weights.with_suffix(".md")


def _report(
    path: Path,
    title: str,
    command: str,
    config: dict,
    history: list[dict],
    seconds: float,
    notes: str,
    validation: str = "held-out crops of the train sources, other seed",
) -> None:
    import torch

    lines = [
        f"# {title}: training report",
        "",
        f"Command: `{command}`",
        "",
        (
            f"Python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
            f"device {config.get('device')}, {torch.get_num_threads()} CPU threads; "
            f"wall time {seconds / 60:.1f} min. Processor: {_processor_description()}; the same "
            "tensors need the same torch, thread count and CPU kernels (their rounding differs)."
        ),
        "",
        notes,
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [_settings_table(config)]
    lines += ["", f"## Loss curve and validation ({validation})", "", _history_table(history)]
    path.write_text("\n".join(lines) + "\n")


def _processor_description() -> str:
    """The CPU's model name and the instruction set torch's CPU kernels were built for.

    Float rounding in torch's convolutions depends on that instruction set, so a
    training command can give other bytes on another processor.
    """
    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    return f"{name}, torch CPU kernels {torch.backends.cpu.get_cpu_capability()}"


def _settings_table(config: dict) -> str:
    """Markdown rows ``| setting | value |`` of a run's settings (without its history)."""
    return "\n".join(f"| {key} | {value} |" for key, value in config.items() if key != "history")


def _history_table(history: list[dict]) -> str:
    """Markdown table of the logged validation entries (one row per entry)."""
    if not history:
        return ""
    keys = list(history[0].keys())
    lines = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    for entry in history:
        lines.append(
            "| "
            + " | ".join(f"{entry[k]:.4f}" if isinstance(entry[k], float) else str(entry[k]) for k in keys)
            + " |"
        )
    return "\n".join(lines)


PROCEDURAL_POOL = 64
"""Images in each pool of procedural textures, point-source fields or printed-text pages
(``--procedural-share``, ``--text-share``)."""


def _train_wiener_net(args) -> None:
    import tempfile

    from napari_deblur.engine.methods.wiener_net import WEIGHTS_FILE
    from training.wiener_net import (
        WienerNetTrainingConfig,
        correction_tuning_config,
        fine_tuning_config,
        train_wiener_net,
    )

    base = WienerNetTrainingConfig(
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        log_every=args.log_every,
    )
    if args.widths:
        base = replace(base, widths=tuple(int(w) for w in args.widths.split(",")))
    if args.noise_range:
        base = replace(base, noise_sigma_range=tuple(args.noise_range))
    share_options = {
        "--procedural-share": args.procedural_share or (),
        "--text-share": [args.text_share],
        "--kernel-error-share": [args.kernel_error_share],
        "--blind-share": [args.blind_share],
    }
    for option, shares in share_options.items():
        for share in shares:
            if share is not None and not 0 <= share <= 1:
                raise SystemExit(f"{option} is a share of the crops, 0..1; got {share}")
    if args.procedural_share:
        textures, points = args.procedural_share
        base = replace(
            base,
            n_textures=PROCEDURAL_POOL if textures else 0,
            texture_fraction=textures,
            n_point_fields=PROCEDURAL_POOL if points else 0,
            point_field_fraction=points,
        )
    if args.text_share:
        base = replace(base, n_text_pages=PROCEDURAL_POOL, text_fraction=args.text_share)
    if args.kernel_error_share:
        base = replace(base, kernel_error_share=args.kernel_error_share)
    if args.kernel_error_kinds:
        from training.kernels import KERNEL_ERROR_KINDS

        kinds = tuple(args.kernel_error_kinds.split(","))
        unknown = set(kinds) - set(KERNEL_ERROR_KINDS)
        if unknown:
            raise SystemExit(
                f"--kernel-error-kinds takes {','.join(KERNEL_ERROR_KINDS)}; got {sorted(unknown)}"
            )
        base = replace(base, kernel_error_kinds=kinds)
    if args.blind_share:
        if not args.blind_pairs:
            raise SystemExit("--blind-share needs --blind-pairs FILE (made there if it does not exist)")
        from training.blind_pairs import BLIND_PAIRS_COUNT, BLIND_PAIRS_SEED, load_or_make_blind_pairs

        load_or_make_blind_pairs(Path(args.blind_pairs), BLIND_PAIRS_COUNT, BLIND_PAIRS_SEED)
        base = replace(base, blind_share=args.blind_share, blind_pairs=str(args.blind_pairs))
    if args.kernel_error_sigma is not None:
        low, high = args.kernel_error_sigma
        if not 0 < low <= high:
            raise SystemExit(f"--kernel-error-sigma needs 0 < LOW <= HIGH (px); got {low} {high}")
        base = replace(base, kernel_error_sigma_range=(low, high))
    tuning_overrides = {} if args.tuning_steps is None else {"steps": args.tuning_steps}
    if args.tuning_batch is not None:
        tuning_overrides["batch"] = args.tuning_batch
    if args.network_passes is not None:
        tuning_overrides["network_passes"] = args.network_passes
    out = Path(args.out) if args.out else _default_weights_path(WEIGHTS_FILE)
    if args.stage == "base" and args.init:
        raise SystemExit("--init fine-tunes given weights; it does not go with --stage base")
    if args.init_stage != 1 and not args.init:
        raise SystemExit("--init-stage says which stage made the --init weights; give --init too")
    started = time.perf_counter()
    if args.stage == "base":
        train_wiener_net(base, out)
        stages = [("Stage 1 (from scratch)", base)]
        appendix = ""
    else:
        stages = []
        with tempfile.TemporaryDirectory() as scratch:
            init = args.init
            if init is None:
                init = str(Path(scratch) / "wiener_net_stage1.pt")
                train_wiener_net(base, Path(init))
                stages.append(("Stage 1 (from scratch)", base))
            if args.init is None or args.init_stage == 1:
                tuned = replace(fine_tuning_config(base, init), **tuning_overrides)
                init = str(Path(scratch) / "wiener_net_stage2.pt")
                train_wiener_net(tuned, Path(init))
                stages.append(("Stage 2 (fine-tuning)", tuned))
            corrected = replace(correction_tuning_config(base, init), **tuning_overrides)
            train_wiener_net(corrected, out)
            stages.append(("Stage 3 (fine-tuning through the residual correction)", corrected))
        earlier = Path(args.init).with_suffix(".md") if args.init else None
        appendix = (
            ""
            if earlier is None or not earlier.exists()
            else f"\n## Report of the starting weights (`{args.init}`)\n\n"
            + ("\n" + earlier.read_text()).replace("\n# ", "\n### ").replace("\n## ", "\n### ")
        )
    notes = (
        "Data: crops of the scikit-image train split (grayscale) and procedural dead-leaves "
        "images (30 %), random flips/turns and contrast; in `smooth_fraction` of the crops the sharp "
        "source is first smoothed by a Gaussian of 1-4 px (smooth scenes such as fluorescence "
        "images, where the network must add nothing); `texture_fraction` and `point_field_fraction` "
        "of the crops (0 unless `--procedural-share`) from procedural stationary textures and "
        "point-source fields (pools of `n_textures` and `n_point_fields`); `text_fraction` of the "
        "crops (0 unless `--text-share`) from procedural printed text (`n_text_pages` pages); in "
        "`kernel_error_share` of "
        "the crops (0 unless `--kernel-error-share`) the network is handed a wrong PSF while the "
        "blur stays the true one (validation: always the true PSF): by default the true PSF blurred "
        "by a Gaussian of sigma in `kernel_error_sigma_range` px, as a measured or guessed PSF often "
        "is too wide; with `kernel_error_kinds` one of those ways drawn per crop "
        "(`training.kernels.perturb_kernels`: wide, narrow, tails, noise); in `blind_share` of the "
        "crops (0 unless `--blind-share`) the crop is blurred by the true kernel of a blind pair "
        "(`training.blind_pairs`: camera shake on a train-split photo) and the network is handed the "
        "engine's blind estimate of it; PSFs: "
        "`shake_fraction` camera shake (random "
        "trajectories), the rest 2:2:1:1 isotropic Gaussian, anisotropic Gaussian, disk and ring, up "
        "to 31 px; valid convolution (real boundaries); Gaussian noise sigma log-uniform in the range "
        "below, Poisson-Gaussian in `poisson_fraction` of the crops. Model: per-pixel softmax "
        "weights over the 15 Wiener candidates and the blurred plane, plus a residual. Loss: "
        "0.1 ln(MSE) per crop, averaged, + 0.2 (1 - SSIM); with `interior_weight` w > 0 the log "
        "term is (1 - w) ln(MSE) + w ln(MSE without a kernel-wide border) "
        "(`training.wiener_net.restoration_loss`). Three stages: from scratch on 112 px crops, then "
        "fine-tuning on 192 px crops with w = 0.75 and more camera shake "
        "(`training.wiener_net.FINE_TUNING`), then the same on fresh crops with the loss taken after "
        "the engine's residual correction (`training.wiener_net.correction_tuning_config`; the "
        "validation columns of that stage are also after the correction). Validation columns "
        "(held-out crops of the train sources at the stage's crop size, the stage-1 kernel "
        "mixture, never the eval split): mean "
        "PSNR (peak 1) of the network, of the Wiener filter with the best of the "
        "15 SNRs for each crop (`psnr_oracle`, the benchmark's classical reference), of the Wiener "
        "filter at the estimated SNR (`psnr_base`) and of the blurred input; `lost_to_oracle` is "
        "the share of crops where the network scores below the oracle; the `_interior` columns "
        "leave out a border as wide as the kernel's support, as the benchmark does (the oracle "
        "then picks its SNR on the interior too); the `smooth_` columns are "
        "the same measures on a second held-out set in which every sharp source is smoothed first, "
        "the `texture_` columns on a third made only of procedural textures (24, held-out seed), "
        "the `points_` columns on a fourth made only of point-source fields (star fields, "
        "fluorescent beads; 24, held-out seed). "
        "A stage that starts from weights has a step-0 row: those weights, before the stage. "
        "With `network_passes` n > 1 (`--network-passes`) the fine-tuning stages train, and validate, "
        "the mean of the network over n flipped or turned views, as the engine's `ensemble` runs it."
    )
    title, last = stages[-1]
    report = _report_path(out)
    _report(
        report,
        "Wiener-net",
        args.command,
        asdict(last),
        last.history,
        time.perf_counter() - started,
        notes + f" The settings and curve below are those of the last stage, {title.lower()}.",
    )
    text = report.read_text()
    for title, config in stages[:-1]:
        text += (
            f"\n## {title}\n\n| setting | value |\n|---|---|\n{_settings_table(asdict(config))}\n"
            f"\n{_history_table(config.history)}\n"
        )
    report.write_text(text + appendix)


def _train_wiener_net_3d(args) -> None:
    from napari_deblur.engine.nets.wiener_net_3d import WEIGHTS_FILE
    from training.wiener_net_3d import WienerNet3DTrainingConfig, train_wiener_net_3d

    config = WienerNet3DTrainingConfig(
        cases=args.cases,
        validation_cases=args.validation_cases,
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        workers=args.workers,
        threads=args.threads,
        log_every=args.log_every,
        device="cpu",
        cache=args.cache or "",
    )
    out = Path(args.out) if args.out else _default_weights_path(WEIGHTS_FILE)
    started = time.perf_counter()
    train_wiener_net_3d(config, out)
    notes = (
        "Data: `cases` procedural volumes of 32 x 64 x 64 voxels (`training.volumes.random_case`: beads, "
        "filaments, textured nuclei, membranes and haze, each present at random; blurred from a larger "
        "specimen, so light comes in from outside the field in z, y and x) under random microscope PSFs "
        "(31 x 63 x 63 voxels: NA 0.5-1.45 in oil, water, silicone or air, emission 450-680 nm, lateral "
        "sampling 0.6-1.6 x Nyquist, z steps 1-4 x the lateral size, refractive-index mismatch with the "
        "source up to 8 um deep in 40 %, vectorial/scalar/Gaussian models 6:3:1, confocal in 30 %), "
        "Poisson noise (10^1.3-10^3.7 photons at the blurred 99.9th percentile, background 0-30) plus "
        "Gaussian read noise (0.5-4 e-). The candidates are the engine's own "
        "(`napari_deblur.engine.methods.wiener_net_3d.iter_candidates`). Training: random 16 x 48 x 48 "
        "sub-volumes, flips in z, y and x and lateral transposes; AdamW, cosine schedule; loss "
        "log10(MSE / range^2) per sub-volume over its interior, with the truth's range over the whole case "
        "(minus PSNR / 10). Validation: "
        "`validation_cases` whole cases of another seed; columns are mean PSNR (interior, the truth's "
        "range) of the network, of every candidate, and of the best Richardson-Lucy snapshot per case (10, 20, 50 or 100 iterations; a count the automatic stop did not reach holds the stopped result) "
        "(`rl_oracle`); `lost_to_rl_oracle` is the share of cases where the network scores below it."
    )
    _report(
        _report_path(out),
        "Wiener-net 3D",
        args.command,
        asdict(config),
        config.history,
        time.perf_counter() - started,
        notes,
        validation="whole procedural volumes of another seed",
    )


def _train_blur_map(args) -> None:
    from napari_deblur.engine.methods.blur_map import WEIGHTS_FILE
    from training.baselines import PAPER_WEIGHTS_FILE, WEIGHTS_DIR
    from training.blur_map import STACK_LEVELS, BlurMapTrainingConfig, train_blur_map

    config = BlurMapTrainingConfig(
        steps=args.steps,
        batch=args.batch,
        dead_leaves_fraction=args.dead_leaves_share,
        n_text_pages=60 if args.text_share > 0 else 0,
        text_fraction=args.text_share,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        baseline=args.baseline,
        log_every=args.log_every,
    )
    default = WEIGHTS_DIR / PAPER_WEIGHTS_FILE if args.baseline else _default_weights_path(WEIGHTS_FILE)
    out = Path(args.out) if args.out else default
    started = time.perf_counter()
    train_blur_map(config, out)
    network = (
        "the paper's network (Nasonov, Krylov & Lyukov: 5x5x32, 5x5x32, 2x2 max-pool, "
        "11x11x64, 1x1x17, 1x1x1, ReLU), on random `baseline_patch` crops of each patch"
        if args.baseline
        else "BlurMapNet (napari_deblur.engine.methods.blur_map)"
    )
    notes = (
        f"Network: {network}. Data: crops of the scikit-image train split (grayscale; images at "
        "least twice the patch size at half resolution), procedural dead-leaves images and, in "
        "`texture_fraction` of the crops, procedural stationary textures (fractal noise, flat-level "
        "blobs, Voronoi cells, gratings; `n_textures` images), random flips/turns and contrast. Blur: one kind per crop (Gaussian, disk, ring), a level map per "
        "crop (uniform, ramp, sinusoid, Voronoi regions, smooth random field; levels in [0, 6] px, "
        "half of the draws in [0, 3]), made from a level stack at "
        f"{', '.join(f'{v:g}' for v in STACK_LEVELS)} px (batched FFT) mixed per pixel with "
        "weights exact in squared level; labels = psf_blur_level of the mixed kernel. Noise: "
        "Gaussian variance U[0, 10] on 0..255, Poisson-Gaussian in `poisson_fraction` of the "
        "crops. Loss: L1 on log(1 + level / 0.5). Validation: fixed batches drawn with seed + 1000 "
        "(other crops of the same train sources, never the eval split); errors in px of the level "
        "(all pixels; textured = the half with the largest gradient; uniform vs spatially varying "
        "maps). `data_share` is the fraction of wall time spent making batches."
    )
    if config.stopped_at is not None:
        notes += (
            f" **Stopped by the user (Ctrl-C) at step {config.stopped_at} of {config.steps}**: "
            "the learning-rate schedule did not run to its end; the last row is the state "
            "that was saved."
        )
    title = "Blur map (paper's network, baseline)" if args.baseline else "Blur map"
    _report(
        _report_path(out),
        title,
        args.command,
        asdict(config),
        config.history,
        time.perf_counter() - started,
        notes,
    )


def _train_gwis_level(args) -> None:
    from training.baselines import GWIS_WEIGHTS_FILE, WEIGHTS_DIR
    from training.gwis_level import (
        GWIS_LEVEL_GRID,
        LABEL_TOLERANCE,
        GwisLevelTrainingConfig,
        train_gwis_level,
    )

    config = GwisLevelTrainingConfig(
        steps=args.steps,
        label_batches=args.label_batches,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        log_every=args.log_every,
    )
    out = Path(args.out) if args.out else WEIGHTS_DIR / GWIS_WEIGHTS_FILE
    started = time.perf_counter()
    train_gwis_level(config, out)
    notes = (
        "Network: BlurMapNet (napari_deblur.engine.methods.blur_map), started from the shipped blur-map "
        "weights (`blur_map.pt`) and fine-tuned. Labels (training.gwis_level): "
        "`label_batches` batches of the blur map's own training crops (train split and procedural "
        "images; Gaussian, disk and ring blur, uniform and spatially varying levels 0..6 px; "
        "Gaussian and Poisson-Gaussian noise), each sharpened by GWIS at the levels "
        f"{', '.join(f'{v:g}' for v in GWIS_LEVEL_GRID)} px; the label of a pixel is the lowest level "
        "whose result has a local SSIM (11x11 Gaussian window, against the sharp crop) within "
        f"{LABEL_TOLERANCE:g} of the best, its weight the SSIM spread over the levels; the "
        "`drop_fraction` of crops with the lowest mean spread are not kept. Loss: spread-weighted "
        "L1 on log(1 + level / 0.5); random flips and transpositions. Validation (never the eval "
        "split): crops like the training ones drawn with seed + 1000, and (`photo_` columns) "
        "`photo_patch` crops of the train-split photos only with one uniform level each (the "
        "benchmark's use case), drawn with seed + 2000; "
        "`ssim_*` is the mean local SSIM of GWIS driven by: nothing (`blurred`), the best single "
        "grid level per crop (`oracle_constant`), the per-pixel labels themselves (`labels`), the "
        "blur map it started from (`start_map`), this network (`tuned_map`); `share_*` is the "
        "fraction of the oracle constant's SSIM gain a map recovers. `label_minutes` is the time "
        "spent making the labels."
    )
    _report(
        _report_path(out),
        "GWIS-tuned blur map",
        args.command,
        asdict(config),
        config.history,
        time.perf_counter() - started,
        notes,
    )


def _region_selector_tables(config) -> str:
    """Markdown: data counts, classification and the product comparison on held-out images."""
    data, validation = config.data, config.validation
    lines = [
        "## Labels",
        "",
        "| quantity | value |",
        "|---|---:|",
    ]
    lines += [f"| {key} | {value} |" for key, value in data.items()]
    if validation:
        product = validation["product"]
        lines += [
            "",
            "## Validation (held-out images, all their grid windows, unbalanced)",
            "",
            "| accuracy | balanced accuracy | ROC AUC |",
            "|---:|---:|---:|",
            (
                f"| {validation['accuracy']:.3f} | {validation['balanced_accuracy']:.3f} | "
                f"{validation['roc_auc']:.3f} |"
            ),
            "",
            (
                f"Within-image ROC AUC (ranking the windows of one image, the selection task; mean "
                f"over the {product['images_with_both_classes']} held-out images that have both good "
                f"and bad windows): {product['within_image_roc_auc']:.3f}."
            ),
            "",
            (
                f"Kernel similarity of the PSF estimated from each of the {product['images']} "
                f"held-out images, by the window it was estimated from (success: similarity >= "
                f"{config.threshold}; the random window's numbers are expectations over its grid):"
            ),
            "",
            "| window | mean similarity | median similarity | success rate |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {values['mean_similarity']:.3f} | {values['median_similarity']:.3f} | "
            f"{values['success_rate']:.2f} |"
            for name, values in product.items()
            if isinstance(values, dict)
        ]
    return "\n".join(lines)


def _train_region_selector(args) -> None:
    from napari_deblur.engine.methods.region_selector import WEIGHTS_FILE
    from training.region_selector import (
        RegionSelectorTrainingConfig,
        cache_path,
        train_region_selector,
    )

    config = RegionSelectorTrainingConfig(
        windows=args.windows,
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        cache_dir=args.cache,
        log_every=args.log_every,
        workers=args.workers,
    )
    out = Path(args.out) if args.out else _default_weights_path(WEIGHTS_FILE)
    started = time.perf_counter()
    train_region_selector(config, out)
    notes = (
        "Network: RegionSelectorNet (napari_deblur.engine.methods.region_selector): strided convolutions, "
        "no pooling, global average, one logit; windows normalised by their own mean and standard "
        "deviation. Labels: synthetic blurred images (`image_size` px) cut from the scikit-image "
        "train split (grayscale) or procedural dead leaves, random turn/flip/contrast; a "
        "`composite_fraction` of them merge that crop with a second crop or a faint plain area "
        "along a random smooth border (so the windows of one image differ); one kernel per image: "
        "camera shake (random_motion_psf), Gaussian or disk (defocus), up to 25 px, valid "
        "convolution of a larger crop (real boundaries), white Gaussian noise (sigma in "
        "`noise_sigma_range` of [0, 1]). The engine's blind estimator (estimate_psf, odd kernel "
        "size drawn between the true side (at least 7) and `estimate_size_max`; with the constants "
        "in `label_estimator` set, the estimator of an earlier release) runs on each "
        "`window`-px window of a grid of step `window_stride`; label = kernel similarity >= "
        "`threshold`. Whole images are held out for validation (every `validation_every`-th); "
        f"labels cached in `{cache_path(config).name}` (under `--cache`, default "
        "~/.cache/napari-deblur). Training: balanced classes (majority subsampled), BCE, plus "
        "`rank_weight` x a within-image ranking loss (softplus of the score difference over pairs "
        "of windows of one image whose similarities differ by more than `rank_gap`, "
        "`rank_images` whole images per step), AdamW with one-cycle schedule, random 90-degree "
        "turns and flips (the kernel turns with the window; the label does not change)."
    )
    settings = {key: value for key, value in asdict(config).items() if key not in ("data", "validation")}
    report = _report_path(out)
    _report(
        report,
        "Region selector",
        args.command,
        settings,
        config.history,
        time.perf_counter() - started,
        notes,
        validation="all grid windows of the held-out images, unbalanced",
    )
    report.write_text(report.read_text() + "\n" + _region_selector_tables(config) + "\n")


def main(argv=None) -> None:
    from napari_deblur.engine.nets.layers import ENSEMBLE_SIZES

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="model", required=True)
    wiener = sub.add_parser("wiener-net", help="train Wiener-net")
    wiener.add_argument("--steps", type=int, default=4000, help="steps of the first stage")
    wiener.add_argument("--batch", type=int, default=16)
    wiener.add_argument("--seed", type=int, default=0)
    wiener.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    wiener.add_argument(
        "--log-every", type=int, default=500, help="validate every this many steps of the first stage"
    )
    wiener.add_argument(
        "--tuning-steps",
        type=int,
        default=None,
        help="steps of each fine-tuning stage (default 1200, FINE_TUNING)",
    )
    wiener.add_argument(
        "--tuning-batch",
        type=int,
        default=None,
        help="crops per step of each fine-tuning stage (default: training.wiener_net.FINE_TUNING, 8)",
    )
    wiener.add_argument(
        "--network-passes",
        type=int,
        choices=ENSEMBLE_SIZES,
        default=None,
        help="each fine-tuning stage trains (and validates) the mean of the network over "
        "this many flipped or turned views, as the engine's ensemble runs it "
        "(default 1: one pass)",
    )
    wiener.add_argument(
        "--widths",
        default=None,
        help="channels of the four network levels, e.g. 48,64,96,128 (default: "
        "wiener_net.WIDTHS); the engine runs only weights of its own widths",
    )
    wiener.add_argument(
        "--noise-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="Gaussian noise sigma of every stage, log-uniform (default 0.005 0.05)",
    )
    wiener.add_argument(
        "--procedural-share",
        type=float,
        nargs=2,
        default=None,
        metavar=("TEXTURES", "POINTS"),
        help="fractions of the crops of every stage drawn from procedural stationary "
        "textures and from point-source fields (default 0 0)",
    )
    wiener.add_argument(
        "--text-share",
        type=float,
        default=None,
        metavar="SHARE",
        help="fraction of the crops of every stage drawn from procedural printed text (default 0)",
    )
    wiener.add_argument(
        "--kernel-error-share",
        type=float,
        default=None,
        metavar="SHARE",
        help="share of the crops whose network input gets a PSF widened by a Gaussian "
        "of 0.4-1 px (the blur stays true), all stages",
    )
    wiener.add_argument(
        "--kernel-error-kinds",
        default=None,
        metavar="KINDS",
        help="comma-separated ways the handed PSF is wrong: wide, narrow, tails, noise "
        "(training.kernels.perturb_kernels; default: wide)",
    )
    wiener.add_argument(
        "--kernel-error-sigma",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="range of that Gaussian's sigma in px, uniform (default 0.4 1.0)",
    )
    wiener.add_argument(
        "--blind-share",
        type=float,
        default=None,
        metavar="SHARE",
        help="share of the crops blurred by a camera-shake kernel and handed the engine's blind "
        "estimate of it (training.blind_pairs), all stages (default 0)",
    )
    wiener.add_argument(
        "--blind-pairs",
        default=None,
        metavar="FILE",
        help="the blind pairs' .npz file; made there first if missing (about 6 min on 2 cores)",
    )
    wiener.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    wiener.add_argument("--out", default=None, help="weights path (default: the shipped file)")
    wiener.add_argument(
        "--stage",
        choices=("all", "base"),
        default="all",
        help="all: from scratch, then the two fine-tuning stages (the shipped "
        "weights); base: the first stage only",
    )
    wiener.add_argument(
        "--init",
        default=None,
        help="skip the first stage: fine-tune these weights (e.g. an earlier "
        "--stage base run; its .md report is appended)",
    )
    wiener.add_argument(
        "--init-stage",
        type=int,
        choices=(1, 2),
        default=1,
        help="the stage that made the --init weights: 1 runs stages 2 and 3 from them, 2 only stage 3",
    )
    wiener.set_defaults(run=_train_wiener_net)
    net3d = sub.add_parser("wiener-net-3d", help="train Wiener-net 3D on procedural volumes")
    net3d.add_argument(
        "--cases", type=int, default=480, help="training volumes (made once, in --workers processes)"
    )
    net3d.add_argument("--validation-cases", type=int, default=24)
    net3d.add_argument("--steps", type=int, default=3000)
    net3d.add_argument("--batch", type=int, default=4)
    net3d.add_argument("--seed", type=int, default=0)
    net3d.add_argument("--workers", type=int, default=2, help="processes that make the volumes")
    net3d.add_argument("--threads", type=int, default=2, help="CPU threads of the training")
    net3d.add_argument("--log-every", type=int, default=250, help="validate and save every this many steps")
    net3d.add_argument(
        "--cache", default=None, help="folder to keep the made volumes in and read them from (about 2.5 GB)"
    )
    net3d.add_argument("--out", default=None, help="weights path (default: the shipped file)")
    net3d.set_defaults(run=_train_wiener_net_3d)
    blurmap = sub.add_parser("blurmap", help="train the blur-map estimator")
    blurmap.add_argument(
        "--steps",
        type=int,
        default=7200,
        help="optimisation steps (the paper's network was trained with 400)",
    )
    blurmap.add_argument("--batch", type=int, default=16)
    blurmap.add_argument(
        "--dead-leaves-share",
        type=float,
        default=0.3,
        help="share of the non-texture, non-text crops taken from dead-leaves images instead of "
        "photos (default: %(default)s)",
    )
    blurmap.add_argument(
        "--text-share",
        type=float,
        default=0.0,
        help="share of crops taken from procedural printed-text pages, drawn sharp (default: %(default)s)",
    )
    blurmap.add_argument("--seed", type=int, default=0)
    blurmap.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    blurmap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    blurmap.add_argument(
        "--baseline",
        action="store_true",
        help="train the paper's network instead (training/weights/blur_map_paper.pt)",
    )
    blurmap.add_argument(
        "--log-every", type=int, default=300, help="validate and save the weights every this many steps"
    )
    blurmap.add_argument(
        "--out",
        default=None,
        help="weights path (default: the shipped file; with --baseline training/weights/blur_map_paper.pt)",
    )
    blurmap.set_defaults(run=_train_blur_map)
    gwis_level = sub.add_parser(
        "gwis-level", help="fine-tune the blur map on GWIS labels (the map for sharpening)"
    )
    gwis_level.add_argument("--steps", type=int, default=1500)
    gwis_level.add_argument(
        "--label-batches",
        type=int,
        default=64,
        help="batches of 16 crops labelled by GWIS at every grid level",
    )
    gwis_level.add_argument("--seed", type=int, default=0)
    gwis_level.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    gwis_level.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    gwis_level.add_argument("--log-every", type=int, default=500, help="validate every this many steps")
    gwis_level.add_argument(
        "--out", default=None, help="weights path (default: training/weights/gwis_level.pt)"
    )
    gwis_level.set_defaults(run=_train_gwis_level)
    selector = sub.add_parser("region-selector", help="label windows and train the region selector")
    selector.add_argument(
        "--windows",
        type=int,
        default=2400,
        help="labelled windows (the blind estimator runs once on each; cached)",
    )
    selector.add_argument("--steps", type=int, default=1200)
    selector.add_argument("--batch", type=int, default=16)
    selector.add_argument("--seed", type=int, default=0)
    selector.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    selector.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    selector.add_argument(
        "--workers", type=int, default=1, help="processes that make the labels (the slow part; one per core)"
    )
    selector.add_argument("--log-every", type=int, default=250, help="validate every this many steps")
    selector.add_argument(
        "--cache", default=None, help="folder of the label cache (default: ~/.cache/napari-deblur)"
    )
    selector.add_argument("--out", default=None, help="weights path (default: the shipped file)")
    selector.set_defaults(run=_train_region_selector)
    args = parser.parse_args(argv)
    args.command = " ".join([PROG] + list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()

"""Engine core: blur, Wiener deconvolution, stacks and colour, jobs, devices, tiling, bad input."""

import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from scipy.signal import fftconvolve
from skimage import data
from skimage.metrics import peak_signal_noise_ratio
from skimage.restoration import wiener as skimage_wiener

from napari_deblur import engine
from napari_deblur.engine import (
    WIENER_STACK_SNRS_DB,
    JobCancelled,
    blur,
    disk_psf,
    estimate_blur_map,
    gaussian_psf,
    iter_wiener_deconvolve,
    motion_psf,
    run_job,
    select_device,
    sharpen_gwis,
    wiener_deconvolve,
    wiener_deconvolve_snr_stack,
    wiener_net_deconvolve,
)
from napari_deblur.engine.core import devices
from napari_deblur.engine.core.tiling import iter_tiled
from napari_deblur.engine.methods.wiener import signal_power_spectrum


@pytest.fixture(scope="session")
def photo():
    """A 128x128 crop of the camera image, float in [0, 1]."""
    return data.camera()[100:228, 200:328].astype(np.float32) / 255.0


def psnr(reference, estimate):
    return peak_signal_noise_ratio(reference, estimate, data_range=1.0)


def real_boundary_blur(image, kernel, noise_sigma, seed=0):
    """Blur as a camera does: content beyond the frame bleeds in ('valid' convolution)."""
    radius = kernel.shape[0] // 2
    sharp = image[radius:-radius, radius:-radius]
    blurred = fftconvolve(image, kernel, mode="valid")
    blurred = blurred + np.random.default_rng(seed).normal(0, noise_sigma, blurred.shape)
    return sharp, blurred.astype(np.float32)


# --- import hygiene -----------------------------------------------------------------


def test_engine_imports_no_gui_packages():
    code = (
        "import sys, napari_deblur.engine; "
        "bad = [m for m in ('napari', 'qtpy', 'magicgui', 'PyQt6', 'PyQt5', 'PySide6') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# --- blur ----------------------------------------------------------------------------


def test_blur_matches_scipy_reflect_convolution(photo):
    kernel = motion_psf(7, 30)
    expected = ndi.convolve(photo.astype(np.float64), kernel.astype(np.float64), mode="reflect")
    np.testing.assert_allclose(blur(photo, kernel), expected, atol=1e-5)


def test_blur_keeps_the_intensity_scale_of_integer_input(photo):
    as_uint8 = (photo * 255).astype(np.uint8)
    blurred = blur(as_uint8, gaussian_psf(1.0))
    assert blurred.dtype == np.float32
    assert 50 < blurred.mean() < 200
    assert blurred.mean() == pytest.approx(as_uint8.mean(), rel=0.01)


def test_blur_with_a_per_plane_psf_stack(photo):
    stack = np.stack([photo, photo[::-1]])
    kernels = np.stack([gaussian_psf(1.0, size=9), disk_psf(3.0, size=9)])
    out = blur(stack, kernels, psf_per_plane=True)
    np.testing.assert_allclose(out[0], blur(photo, kernels[0]), atol=1e-6)
    np.testing.assert_allclose(out[1], blur(photo[::-1], kernels[1]), atol=1e-6)


def test_a_3d_psf_blurs_in_3d_with_mirrored_boundaries():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    volume = rng.uniform(0, 1, (7, 24, 20)).astype(np.float32)
    psf = rng.uniform(0, 1, (3, 5, 5)).astype(np.float32)
    psf /= psf.sum()
    expected = ndimage.convolve(volume.astype(np.float64), psf.astype(np.float64), mode="reflect")
    np.testing.assert_allclose(blur(volume, psf), expected, atol=1e-5)
    series = np.stack([volume, volume[::-1]])  # (t, z, y, x): each volume on its own
    np.testing.assert_allclose(blur(series, psf)[1], blur(volume[::-1], psf), atol=1e-6)
    with pytest.raises(ValueError, match="3D"):
        blur(volume[0], psf)  # a 3D PSF on a 2D image


# --- Wiener ---------------------------------------------------------------------------


def test_wiener_agrees_with_skimage_on_periodic_data(photo):
    kernel = gaussian_psf(1.5)
    zero_mean = photo - photo.mean()
    # Periodic blur: circular convolution.
    padded = np.zeros_like(zero_mean)
    padded[: kernel.shape[0], : kernel.shape[1]] = kernel
    padded = np.roll(padded, (-(kernel.shape[0] // 2), -(kernel.shape[1] // 2)), axis=(0, 1))
    blurred = np.real(np.fft.ifft2(np.fft.fft2(zero_mean) * np.fft.fft2(padded)))
    # skimage's Wiener filter is conj(H) / (|H|^2 + balance |R|^2); ours uses |R|^2 = 1 / P(f),
    # the model image spectrum, given to skimage as a (complex) transfer function.
    spectrum = signal_power_spectrum(photo.shape, torch.device("cpu"), torch.float64).numpy()
    regulariser = np.sqrt(1.0 / spectrum).astype(np.complex128)
    snr_db = 20.0
    expected = skimage_wiener(blurred, kernel, balance=10 ** (-snr_db / 10), reg=regulariser, clip=False)
    ours = wiener_deconvolve(blurred, kernel, snr_db=snr_db, boundary="periodic")
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_model_spectrum_has_mean_one_and_falls_with_frequency():
    spectrum = signal_power_spectrum((64, 64), torch.device("cpu"), torch.float64)
    two_sided = np.concatenate([spectrum.numpy(), spectrum.numpy()[:, 1:-1][:, ::-1]], axis=1)
    assert two_sided.shape == (64, 64)
    assert two_sided.mean() == pytest.approx(1.0, rel=1e-6)
    assert spectrum[0, 1] > spectrum[0, 8] > spectrum[0, 32]


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


@pytest.mark.parametrize("kernel", [disk_psf(4.0), gaussian_psf(2.0)], ids=["disk", "gaussian"])
def test_wiener_improves_a_real_boundary_photo_without_frame_ringing(kernel):
    image = data.camera()[40:300, 100:360].astype(np.float32) / 255.0
    sharp, blurred = real_boundary_blur(image, kernel, noise_sigma=0.005)
    restored = wiener_deconvolve(blurred, kernel, snr_db=20)
    assert psnr(sharp, restored) > psnr(sharp, blurred) + 1.5
    frame = np.ones(sharp.shape, bool)
    frame[12:-12, 12:-12] = False
    # Ringing would make the 12 px frame band much worse than the interior.
    assert rmse(sharp[frame], restored[frame]) < 1.1 * rmse(sharp[~frame], restored[~frame])
    assert rmse(sharp[frame], restored[frame]) < rmse(sharp[frame], blurred[frame])
    periodic = wiener_deconvolve(blurred, kernel, snr_db=20, boundary="periodic")
    assert rmse(sharp[frame], periodic[frame]) > 2 * rmse(sharp[frame], restored[frame])


def test_wiener_keeps_mean_brightness_and_scale(photo):
    as_uint16 = (photo * 4000).astype(np.uint16)
    restored = wiener_deconvolve(blur(as_uint16, gaussian_psf(1.0)), gaussian_psf(1.0), snr_db=9)
    assert restored.dtype == np.float32
    assert restored.mean() == pytest.approx(as_uint16.mean(), rel=0.01)


def test_snr_stack_matches_single_snr_calls(photo):
    kernel = gaussian_psf(1.2)
    blurred = blur(photo, kernel)
    stack = wiener_deconvolve_snr_stack(blurred, kernel)
    assert stack.shape == (len(WIENER_STACK_SNRS_DB),) + photo.shape
    assert WIENER_STACK_SNRS_DB[0] == 9 and WIENER_STACK_SNRS_DB[-1] == 65 and len(WIENER_STACK_SNRS_DB) == 15
    for index in (0, 7, 14):
        single = wiener_deconvolve(blurred, kernel, snr_db=WIENER_STACK_SNRS_DB[index])
        np.testing.assert_allclose(stack[index], single, atol=1e-5)
    # Higher SNR sharpens more: more high-frequency energy.
    assert np.abs(np.diff(stack[-1])).mean() > np.abs(np.diff(stack[0])).mean()


def test_stacks_and_colour_are_processed_plane_by_plane(photo):
    kernel = gaussian_psf(1.0)
    rgb = np.stack([photo, photo[::-1], photo.T], axis=-1)
    out_rgb = wiener_deconvolve(rgb, kernel, channel_axis=-1)
    assert out_rgb.shape == rgb.shape
    for channel in range(3):
        np.testing.assert_allclose(
            out_rgb[..., channel], wiener_deconvolve(rgb[..., channel], kernel), atol=1e-5
        )
    time_z = np.stack([np.stack([photo, photo * 0.5])] * 2)  # (t, z, y, x)
    out = wiener_deconvolve(time_z, kernel)
    assert out.shape == time_z.shape
    np.testing.assert_allclose(out[1, 1], wiener_deconvolve(photo * 0.5, kernel), atol=1e-5)


@pytest.mark.parametrize(
    "method",
    [
        lambda image, **kw: wiener_deconvolve(image, gaussian_psf(1.0), **kw),
        lambda image, **kw: engine.wiener_net_deconvolve(image, gaussian_psf(1.0), ensemble=1, **kw),
        lambda image, **kw: engine.richardson_lucy(image, gaussian_psf(1.0), **kw),
        lambda image, **kw: engine.sharpen_gwis(image, 1.0, **kw),
        lambda image, **kw: engine.estimate_blur_map(image, **kw),
        lambda image, **kw: engine.deblur_defocus(image, 1.0, ensemble=1, **kw),
        lambda image, **kw: blur(image, gaussian_psf(1.0), **kw),
    ],
    ids=["wiener", "wiener-net", "richardson-lucy", "gwis", "blur-map", "defocus", "blur"],
)
def test_a_trailing_axis_of_three_or_four_is_colour_unless_said_otherwise(photo, method):
    """An RGB or RGBA photo needs no channel_axis: the same result as channel_axis=-1."""
    crop = photo[:64, :80]
    for channels in (3, 4):
        colour = np.stack([crop, crop[::-1], crop[:, ::-1], crop * 0.5][:channels], axis=-1)
        found = method(colour)
        np.testing.assert_array_equal(found, method(colour, channel_axis=-1))
        assert found.shape[:2] == colour.shape[:2]
    planes = np.stack([crop] * 3)  # three planes first: a stack, not colour
    assert method(planes).shape[0] == 3


def test_per_plane_psf_repeats_over_time(photo):
    time_z = np.stack([np.stack([photo, photo])] * 3)  # (t=3, z=2, y, x)
    kernels = np.stack([gaussian_psf(1.0, size=9), gaussian_psf(2.0, size=9)])
    out = wiener_deconvolve(time_z, kernels, psf_per_plane=True)
    np.testing.assert_allclose(out[2, 1], wiener_deconvolve(photo, kernels[1]), atol=1e-5)


def test_a_3d_psf_means_3d_wiener_and_a_stack_of_kernels_must_say_so():
    from napari_deblur.engine import wiener_deconvolve_3d, wiener_deconvolve_snr_stack

    rng = np.random.default_rng(2)
    volume = rng.uniform(0, 1, (9, 24, 24)).astype(np.float32)
    psf = np.stack([gaussian_psf(s, size=7) for s in (2.0, 1.0, 2.0)])
    np.testing.assert_array_equal(
        wiener_deconvolve(volume, psf, snr_db=25.0, device="cpu"),
        wiener_deconvolve_3d(volume, psf, snr_db=25.0, device="cpu"),
    )
    import dask.array as da

    series = np.stack([volume, volume[::-1]])
    lazy = wiener_deconvolve(da.from_array(series, chunks=(1, 1, 24, 24)), psf, snr_db=25.0, device="cpu")
    assert isinstance(lazy, da.Array)  # computed one whole volume at a time
    np.testing.assert_allclose(
        lazy[1].compute(), wiener_deconvolve_3d(volume[::-1], psf, snr_db=25.0, device="cpu"), atol=1e-5
    )
    with pytest.raises(ValueError, match="psf_per_plane"):
        wiener_deconvolve_snr_stack(volume[:3], psf, [10.0, 20.0])
    with pytest.raises(ValueError, match="taper"):
        wiener_deconvolve(volume, psf, boundary="periodic")
    with pytest.raises(ValueError, match="one kernel per plane"):
        wiener_deconvolve(volume[:4], psf, psf_per_plane=True)  # 3 kernels, 4 planes


def test_input_is_never_modified(photo):
    original = photo.copy()
    wiener_deconvolve(photo, gaussian_psf(1.0))
    blur(photo, gaussian_psf(1.0))
    assert np.array_equal(photo, original)


# --- bad input -------------------------------------------------------------------------

IMAGE = np.ones((16, 16), np.float32)
KERNEL = gaussian_psf(1.0)


@pytest.mark.parametrize(
    ("image", "psf", "match"),
    [
        (np.zeros((0, 16)), KERNEL, "empty"),
        (np.full((16, 16), np.nan), KERNEL, "NaN"),
        (np.where(np.eye(16) > 0, np.inf, 0.0), KERNEL, "infinite"),
        (IMAGE.astype(np.complex64), KERNEL, "complex"),
        (np.ones(16), KERNEL, "dimensions"),
        (np.ones((1, 1)), KERNEL[:1, :1], "at least"),
        (IMAGE, np.ones((21, 21)), "larger than the image"),
        (IMAGE, -KERNEL, "positive sum"),
        (IMAGE, np.zeros((3, 3)), "positive sum"),
        (IMAGE, np.zeros((0, 3)), "empty"),
        (IMAGE, np.full((3, 3), np.nan), "NaN"),
        (np.ones((16, 16)), np.stack([KERNEL] * 2), "3D PSF needs a 3D volume"),
        (IMAGE, np.ones((1, 1, 1, 1)), "2D kernel"),
        (np.array([[1e300, 0], [0, 0]]), np.ones((1, 1)), "float32 range"),
    ],
)
def test_bad_input_raises_a_clear_value_error(image, psf, match):
    with pytest.raises(ValueError, match=match):
        wiener_deconvolve(image, psf)


def test_non_numeric_input_raises_type_error():
    with pytest.raises(TypeError):
        wiener_deconvolve(np.array([["a", "b"], ["c", "d"]]), KERNEL[:1, :1])
    with pytest.raises(TypeError):
        blur(None, KERNEL)


@pytest.mark.parametrize("channel_axis", [5, -4])
def test_bad_channel_axis(channel_axis):
    with pytest.raises(ValueError, match="channel_axis"):
        wiener_deconvolve(np.ones((8, 8, 3)), KERNEL[:3, :3], channel_axis=channel_axis)


def test_bad_snr_and_boundary():
    with pytest.raises(ValueError, match="SNR"):
        wiener_deconvolve(IMAGE, KERNEL, snr_db=float("nan"))
    with pytest.raises(ValueError, match="boundary"):
        wiener_deconvolve(IMAGE, KERNEL, boundary="wrap")


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.uint16, np.int32, np.int64, np.float16, np.float64])
def test_every_real_dtype_is_accepted(dtype):
    image = (np.arange(256).reshape(16, 16) % 2).astype(dtype)
    out = wiener_deconvolve(image, KERNEL)
    assert out.dtype == np.float32 and out.shape == (16, 16) and np.isfinite(out).all()


# --- devices -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        lambda x: wiener_deconvolve(x, KERNEL),
        lambda x: wiener_net_deconvolve(x, KERNEL),
        lambda x: sharpen_gwis(x, 1.5),
        lambda x: sharpen_gwis(x, "auto"),
        lambda x: blur(x, KERNEL),
    ],
    ids=["wiener", "wiener-net", "gwis", "gwis-auto", "blur"],
)
def test_huge_intensities_give_the_scaled_result_not_overflow(photo, method, monkeypatch):
    """Values near the top of uint64 or float32 are valid input; squaring them overflows float32."""
    # float32 convolutions: bfloat16 rounds the last bits of the two scales differently.
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")
    factor = 2.0**120  # the plane reaches 1.3e36: its Fourier sums and squares are beyond float32
    plain = method(photo)
    huge = method(photo * np.float32(factor))
    assert np.isfinite(huge).all()
    np.testing.assert_allclose(huge / factor, plain, rtol=1e-4, atol=1e-4)


def test_a_huge_uint64_image_gives_a_finite_blur_map_equal_to_the_scaled_one(photo, monkeypatch):
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")  # as above: the policy, not the rounding
    as_uint64 = (photo.astype(np.float64) * 0.999 * 2.0**64).astype(np.uint64)  # up to 1.8e19
    levels = estimate_blur_map(as_uint64)
    assert np.isfinite(levels).all()
    np.testing.assert_allclose(levels, estimate_blur_map(photo), atol=1e-3)


def test_single_plane_methods_give_the_same_answer_for_a_huge_copy():
    from napari_deblur.engine import estimate_psf, select_regions

    plane = data.camera()[:256, :256].astype(np.float32) / 255.0
    huge = plane * np.float32(2.0**120)
    assert select_regions(huge, size=64, count=3, ranking="network") == select_regions(
        plane, size=64, count=3, ranking="network"
    )
    np.testing.assert_allclose(estimate_psf(huge, size=9), estimate_psf(plane, size=9), atol=1e-6)


TINY_METHODS = [
    lambda x: wiener_deconvolve(x, KERNEL),
    lambda x: wiener_net_deconvolve(x, KERNEL, ensemble=1),
    lambda x: sharpen_gwis(x, 1.5),
    lambda x: sharpen_gwis(x, "auto"),
    lambda x: blur(x, KERNEL),
]
TINY_IDS = ["wiener", "wiener-net", "gwis", "gwis-auto", "blur"]


@pytest.mark.parametrize("method", TINY_METHODS, ids=TINY_IDS)
def test_tiny_intensities_give_the_scaled_result(photo, method):
    """A plane peaking near 1e-12 is processed scaled up by a power of two: the small constants
    inside the methods (division guards, noise floors) do not swamp it."""
    plane = photo * np.float32(0.9 / photo.max())  # peak in [0.5, 1): a power of two maps it back exactly
    plain = method(plane)
    power = method(plane * np.float32(2.0**-40))
    np.testing.assert_array_equal(power, plain * np.float32(2.0**-40))
    decimal = method(plane * np.float32(1e-12))
    assert np.isfinite(decimal).all()
    np.testing.assert_allclose(decimal / 1e-12, plain, rtol=0, atol=5e-3 * float(np.abs(plain).max()))


def test_a_tiny_image_gives_the_same_blur_map(photo):
    plane = photo * np.float32(0.9 / photo.max())
    plain = estimate_blur_map(plane)
    np.testing.assert_array_equal(estimate_blur_map(plane * np.float32(2.0**-40)), plain)
    np.testing.assert_allclose(estimate_blur_map(plane * np.float32(1e-12)), plain, atol=0.05)


def test_tiny_planes_of_a_stack_are_scaled_one_by_one(photo):
    plane = photo * np.float32(0.9 / photo.max())
    stack = np.stack([plane, plane * np.float32(2.0**-60), plane * np.float32(2.0**20)])
    before = stack.copy()
    out = wiener_net_deconvolve(stack, KERNEL, ensemble=1)
    np.testing.assert_array_equal(stack, before)  # the input is never modified
    plain = wiener_net_deconvolve(plane, KERNEL, ensemble=1)
    np.testing.assert_array_equal(out[0], plain)
    np.testing.assert_array_equal(out[1], plain * np.float32(2.0**-60))


def test_single_plane_methods_give_the_same_answer_for_a_tiny_copy():
    from napari_deblur.engine import estimate_psf, select_regions

    plane = data.camera()[:256, :256].astype(np.float32) / 255.0 * np.float32(0.9)
    for factor in (2.0**-40, 1e-12):
        tiny = plane * np.float32(factor)
        assert select_regions(tiny, size=64, count=3, ranking="network") == select_regions(
            plane, size=64, count=3, ranking="network"
        )
        # 1e-12 is not a power of two: float32 rounding differs, by about 1e-4 of the peak
        np.testing.assert_allclose(estimate_psf(tiny, size=9), estimate_psf(plane, size=9), atol=1e-4)


def test_psfs_of_any_float_magnitude_are_normalised_alike():
    from napari_deblur.engine import as_psf

    kernel = gaussian_psf(1.0).astype(np.float64)
    for factor in (1e-300, 1e-45, 1e30, 1e300):
        np.testing.assert_allclose(as_psf(kernel * factor), as_psf(kernel), rtol=1e-6, atol=1e-7)


def test_images_within_32_bit_magnitudes_run_unscaled(photo):
    """uint16 data (and anything up to 2**32) takes exactly the old path: no rescaling round trip."""
    as_uint16 = (photo * 65535).astype(np.uint16)
    from napari_deblur.engine.core.planes import magnitude_exponent

    assert magnitude_exponent(as_uint16.astype(np.float32)) == 0
    assert magnitude_exponent(np.float32([2.0**32])) == 0
    assert magnitude_exponent(np.float32([2.0**33])) == 34
    assert magnitude_exponent(np.float32([2.0**-16])) == 0  # the smallest plain peak
    assert magnitude_exponent(np.float32([-(2.0**-17)])) == -16  # scaled up into [0.5, 1)
    assert magnitude_exponent(np.zeros(4, np.float32)) == 0


def test_automatic_device_prefers_accelerators():
    chosen = select_device(None)
    if torch.cuda.is_available():
        assert chosen.type == "cuda"
    elif torch.backends.mps.is_available():
        assert chosen.type == "mps"
    else:
        assert chosen.type == "cpu"
    assert select_device("auto") == chosen
    assert select_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_gives_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA"):
        wiener_deconvolve(IMAGE, KERNEL, device="cuda")


def test_unknown_device_names():
    with pytest.raises(ValueError, match="device"):
        select_device("tpu")
    with pytest.raises(TypeError):
        select_device(3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(photo):
    kernel = gaussian_psf(2.0)
    np.testing.assert_allclose(
        wiener_deconvolve(photo, kernel, device="cuda"),
        wiener_deconvolve(photo, kernel, device="cpu"),
        atol=1e-4,
    )


# --- jobs: progress and cancel --------------------------------------------------------------


def test_progress_is_reported_per_plane_and_reaches_one(photo):
    updates = []
    wiener_deconvolve(np.stack([photo] * 4), KERNEL, progress=updates.append)
    fractions = [update.fraction for update in updates]
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    assert sum("plane" in update.message for update in updates) >= 4


def test_cancel_stops_between_planes(photo):
    stop = threading.Event()
    seen = []

    def on_progress(update):
        seen.append(update)
        if update.fraction >= 0.25:
            stop.set()

    with pytest.raises(JobCancelled):
        wiener_deconvolve(np.stack([photo] * 8), KERNEL, progress=on_progress, cancel=stop)
    assert seen[-1].fraction < 0.5


def test_generator_twin_returns_the_same_result(photo):
    steps = iter_wiener_deconvolve(photo, KERNEL, snr_db=25)
    np.testing.assert_array_equal(run_job(steps), wiener_deconvolve(photo, KERNEL, snr_db=25))


# --- tiling --------------------------------------------------------------------------------


def local_filter(x):
    weight = torch.ones(1, 1, 5, 5, dtype=x.dtype) / 25
    return torch.nn.functional.conv2d(x, weight, padding=2) ** 2


def test_tiles_are_seamless_for_operations_within_the_halo(photo):
    x = torch.from_numpy(photo)[None, None]
    whole = local_filter(x)
    tiled = run_job(iter_tiled(local_filter, x, tile_size=40, halo=2, blend=8))
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)


def test_out_of_memory_retries_with_smaller_tiles(photo):
    x = torch.from_numpy(photo)[None, None]
    sizes = []

    def picky_filter(tile):
        sizes.append(tile.shape[-1])
        if tile.shape[-1] > 70:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return local_filter(tile)

    messages = []
    tiled = run_job(
        iter_tiled(picky_filter, x, tile_size=128, halo=2, blend=8),
        progress=lambda update: messages.append(update.message),
    )
    torch.testing.assert_close(tiled, local_filter(x), atol=1e-6, rtol=0)
    assert max(sizes) > 70 and any("retrying with 64 px tiles" in m for m in messages)


def test_other_errors_are_not_retried(photo):
    x = torch.from_numpy(photo)[None, None]

    def broken(tile):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_job(iter_tiled(broken, x, tile_size=64, halo=2))


def test_read_only_input_is_accepted_without_warnings(photo):
    import warnings

    frozen = photo.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = wiener_deconvolve(frozen, KERNEL)
    assert restored.shape == frozen.shape and restored.flags.writeable


def test_gpu_tiles_are_larger_and_cpu_tiles_unchanged():
    from napari_deblur.engine.core.tiling import GPU_TILE_SIZE, device_tile_size

    assert device_tile_size(1024, "cpu") == 1024 and device_tile_size(1024, torch.device("cpu")) == 1024
    assert device_tile_size(1024, "cuda") == GPU_TILE_SIZE > 1024
    assert device_tile_size(2 * GPU_TILE_SIZE, "cuda:0") == 2 * GPU_TILE_SIZE
    assert device_tile_size(1024, "mps") == 1024  # only CUDA was measured; Apple GPUs keep the CPU tiles


@pytest.mark.parametrize(
    "length, tile, blend, align",
    [(2048, 1024, 16, 1), (4096, 2048, 64, 16), (3000, 1024, 130, 1), (100, 40, 8, 1), (1024, 1024, 16, 1)],
)
def test_tiles_are_spread_evenly_cover_the_plane_and_keep_the_alignment(length, tile, blend, align):
    from napari_deblur.engine.core.tiling import tile_layout

    size, starts = tile_layout(length, tile, blend, align)
    assert size <= tile and starts[0] == 0 and starts[-1] + size == length
    gaps = np.diff(starts)
    assert np.all(gaps <= size - min(blend, size // 2) + align)  # neighbours overlap by about blend
    assert len(gaps) == 0 or np.ptp(gaps) <= align + 1  # evenly spread: no sliver tile at the end
    if length % align == 0:
        assert all(s % align == 0 for s in starts) and size % align == 0
    # No fewer tiles would do: one tile less could not cover the plane with that overlap.
    assert len(starts) == 1 or (len(starts) - 1) * (tile - blend) + blend < length


# --- blur classes: bad edges --------------------------------------------------------------


@pytest.mark.parametrize(
    "edges",
    [
        [0, float("nan")],
        [0, 1, float("nan"), 3],
        [-1, 1, 2],
        [0, float("inf"), float("inf")],
        [float("-inf"), 1],
        [0, 1, 1, 2],
        [0],
        [[0, 1], [2, 3]],
        list(range(258)),
        ["a", "b"],
    ],
    ids=[
        "nan-last",
        "nan-inner",
        "negative",
        "inf-inner",
        "minus-inf",
        "repeated",
        "one",
        "2d",
        "too-many",
        "text",
    ],
)
def test_blur_classes_refuse_bad_edges(edges):
    from napari_deblur.engine import blur_classes

    with pytest.raises(ValueError, match="edges"):
        blur_classes(np.zeros((4, 4), np.float32), edges=edges)


def test_blur_classes_accept_an_infinite_last_edge_and_255_classes():
    from napari_deblur.engine import blur_classes

    levels = np.array([0.0, 0.5, 1.5, 1e6], np.float32)
    assert blur_classes(levels, edges=[0, 1, float("inf")]).tolist() == [1, 1, 2, 2]
    assert blur_classes(levels, edges=np.arange(256.0)).max() == 255

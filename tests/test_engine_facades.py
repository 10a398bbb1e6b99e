"""Every public engine function is its ``iter_*`` twin run by one mechanism (``job_facade``)."""

from __future__ import annotations

import inspect
import re
import threading

import dask.array as da
import numpy as np
import pytest

from napari_deblur import engine
from napari_deblur.engine import JobCancelled, JobProgress, run_job
from napari_deblur.engine.core.jobs import JobSteps, job_facade

PAIRS = sorted(name[len("iter_") :] for name in engine.__all__ if name.startswith("iter_"))
PSF = engine.gaussian_psf(1.0, size=5)


@pytest.fixture(scope="module")
def blurred() -> np.ndarray:
    """A 64x64 blurred image of random blocks: edges in every direction, seeded."""
    rng = np.random.default_rng(3)
    sharp = np.kron(rng.random((8, 8)), np.ones((8, 8))).astype(np.float32)
    return engine.blur(sharp, PSF) + rng.normal(0, 0.005, sharp.shape).astype(np.float32)


def _arguments(name: str, image: np.ndarray) -> tuple[tuple, dict]:
    """Small, fast arguments for each public function (everything on the CPU)."""
    cpu = {"device": "cpu"}
    return {
        "blur": ((image, PSF), cpu),
        "wiener_deconvolve": ((image, PSF), {"snr_db": 25.0, **cpu}),
        "wiener_deconvolve_snr_stack": ((image, PSF, [10.0, 30.0]), cpu),
        "wiener_net_deconvolve": ((image, PSF), {"ensemble": 1, **cpu}),
        "estimate_blur_map": ((image,), {"views": 1, **cpu}),
        "sharpen_gwis": ((image, 1.0), cpu),
        "estimate_psf": ((image,), {"size": 5, **cpu}),
        "deblur_blind": ((image,), {"size": 5, "ensemble": 1, **cpu}),
        "deblur_defocus": ((image,), {"ensemble": 1, **cpu}),
        "select_regions": ((image,), {"size": 32, "count": 2, "ranking": "network", **cpu}),
        "richardson_lucy": ((image, PSF), {"iterations": 3, **cpu}),
        "wiener_deconvolve_3d": ((np.stack([image] * 9), np.stack([PSF] * 5)), cpu),
        "wiener_net_3d": ((np.stack([image] * 9), np.stack([PSF] * 5)), cpu),
    }[name]


def test_every_twin_has_a_public_function():
    assert PAIRS == sorted(
        [
            "blur",
            "deblur_blind",
            "deblur_defocus",
            "estimate_blur_map",
            "estimate_psf",
            "richardson_lucy",
            "select_regions",
            "sharpen_gwis",
            "wiener_deconvolve",
            "wiener_deconvolve_3d",
            "wiener_deconvolve_snr_stack",
            "wiener_net_3d",
            "wiener_net_deconvolve",
        ]
    )
    for name in PAIRS:
        assert name in engine.__all__


@pytest.mark.parametrize("name", PAIRS)
def test_signature_is_the_twins_plus_progress_and_cancel(name):
    facade = inspect.signature(getattr(engine, name))
    twin = inspect.signature(getattr(engine, f"iter_{name}"))
    added = [
        inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, default=None) for p in ("progress", "cancel")
    ]
    assert list(facade.parameters.values()) == list(twin.parameters.values()) + added


@pytest.mark.parametrize("name", PAIRS)
def test_names_and_docstrings_are_the_public_functions(name):
    facade = getattr(engine, name)
    assert facade.__name__ == name
    assert facade.__module__.startswith("napari_deblur.engine.")
    parameters_section = facade.__doc__.split("Parameters\n")[1].split("Returns\n")[0]
    documented = re.findall(r"^ {4}(\w+(?:, \w+)*)(?: :|$)", parameters_section, flags=re.MULTILINE)
    documented = {n for line in documented for n in line.split(", ")}
    assert set(inspect.signature(facade).parameters) <= documented


@pytest.mark.parametrize("name", PAIRS)
def test_returns_what_running_the_twin_returns(name, blurred):
    args, kwargs = _arguments(name, blurred)
    expected = run_job(getattr(engine, f"iter_{name}")(*args, **kwargs))
    result = getattr(engine, name)(*args, **kwargs)
    if name == "select_regions":
        assert [tuple(r) for r in result] == [tuple(r) for r in expected] and len(result) > 0
    elif name == "deblur_blind":
        for got, want in zip(result, expected, strict=True):  # (image, psf)
            assert got.dtype == want.dtype == np.float32
            np.testing.assert_array_equal(got, want)
    else:
        assert result.dtype == expected.dtype == np.float32
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("name", PAIRS)
def test_progress_and_cancel_reach_the_job(name, blurred):
    args, kwargs = _arguments(name, blurred)
    facade = getattr(engine, name)
    updates = []
    facade(*args, progress=updates.append, **kwargs)
    assert updates and all(isinstance(u, JobProgress) for u in updates)
    assert all(0.0 <= u.fraction <= 1.0 for u in updates)

    with pytest.raises(JobCancelled, match="before it started"):
        facade(*args, cancel=lambda: True, **kwargs)
    stop = threading.Event()
    seen = []
    with pytest.raises(JobCancelled):
        facade(*args, progress=lambda u: (seen.append(u), stop.set()), cancel=stop, **kwargs)
    assert len(seen) == 1


@pytest.mark.parametrize("name", PAIRS)
def test_bad_arguments_fail_at_the_call(name, blurred):
    with pytest.raises(TypeError):
        getattr(engine, name)(blurred, no_such_argument=1)


# --- the mechanism itself ------------------------------------------------------------


def _iter_scale(image, factor: float = 2.0, *, offset: float = 0.0) -> JobSteps[np.ndarray]:
    yield JobProgress(0.5, "scaling")
    return np.asarray(image) * factor + offset


def test_job_facade_runs_the_twin_and_keeps_the_stub_name_and_doc():
    @job_facade(_iter_scale)
    def scale() -> np.ndarray:
        """Scale an image."""

    assert scale.__name__ == "scale" and scale.__doc__ == "Scale an image."
    assert str(inspect.signature(scale)) == (
        "(image, factor: 'float' = 2.0, *, offset: 'float' = 0.0, progress=None, cancel=None) -> 'np.ndarray'"
    )
    updates = []
    np.testing.assert_array_equal(scale(np.ones(2), 3.0, offset=1.0, progress=updates.append), [4.0, 4.0])
    assert updates == [JobProgress(0.5, "scaling")]


def test_job_facade_sends_dask_images_to_the_lazy_path_with_every_argument():
    calls = []

    def lazy(facade, *args, **kwargs):
        calls.append((facade, args, kwargs))
        return "lazy"

    @job_facade(_iter_scale, lazy=lazy)
    def scale() -> np.ndarray:
        """Scale an image."""

    image = da.ones((2, 2), chunks=1)
    assert scale(image, progress=print) == "lazy"
    assert calls == [(scale, (image, 2.0), {"offset": 0.0})]
    np.testing.assert_array_equal(scale(np.ones(1)), [2.0])  # numpy input: the job
    assert len(calls) == 1


def test_job_facade_refuses_a_stub_with_parameters_and_a_twin_with_progress():
    with pytest.raises(TypeError, match="declares parameters"):

        @job_facade(_iter_scale)
        def scale(image):
            """Scale."""

    def iter_with_progress(image, progress=None):
        yield JobProgress(0.0)

    with pytest.raises(TypeError, match="already has"):
        job_facade(iter_with_progress)

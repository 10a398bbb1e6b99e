"""``napari-deblur run`` never destroys data and one bad input never ends a batch.

Every hostile case is made small in the test: huge planes are only declared
(a TIFF header), full disks and memory failures are injected.
"""

from __future__ import annotations

import errno
import os
import signal

import numpy as np
import pytest
import tifffile

from napari_deblur.cli import main
from napari_deblur.io import stack_files


@pytest.fixture(scope="module")
def stack():
    """(2, 40, 44) float32 stack of smooth random blobs."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    return ndimage.gaussian_filter(rng.random((2, 40, 44)), (0, 1.5, 1.5)).astype(np.float32)


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


# --------------------------------------------------------------------------- existing paths


def test_an_existing_file_at_the_output_name_is_kept(tmp_path, stack, capsys):
    source = tmp_path / "a.npy"
    np.save(source, stack)
    out = tmp_path / "out"
    out.mkdir()
    precious = out / "a_gwis.tif"
    precious.write_bytes(b"the user's own file")

    assert main(["run", "gwis", "--blur", "1", str(source), "-o", str(out)]) == 1
    assert precious.read_bytes() == b"the user's own file"
    (line,) = _errors(capsys)
    assert "a_gwis.tif" in line and "already exists" in line

    # --overwrite replaces only what napari-deblur wrote: not this file.
    assert main(["run", "gwis", "--blur", "1", str(source), "-o", str(out), "--overwrite"]) == 1
    assert precious.read_bytes() == b"the user's own file"
    assert "not written by napari-deblur" in _errors(capsys)[0]
    assert _leftovers(out) == []


def test_overwrite_replaces_an_output_napari_deblur_wrote(tmp_path, stack, capsys):
    source = tmp_path / "a.npy"
    np.save(source, stack)
    out = tmp_path / "out"
    assert main(["run", "gwis", "--blur", "1", str(source), "-o", str(out)]) == 0
    first = tifffile.imread(out / "a_gwis.tif")
    assert stack_files.written_by_napari_deblur(out / "a_gwis.tif")

    assert main(["run", "gwis", "--blur", "1", str(source), "-o", str(out)]) == 1  # no flag: kept
    assert "--overwrite" in _errors(capsys)[0]
    np.save(source, stack * 2)
    assert main(["run", "gwis", "--blur", "1", str(source), "-o", str(out), "--overwrite"]) == 0
    np.testing.assert_allclose(tifffile.imread(out / "a_gwis.tif"), first * 2, rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ["a_gwis.tif"]


def test_a_folder_at_the_output_name_is_never_removed(tmp_path, stack, capsys):
    source = tmp_path / "a.npy"
    np.save(source, stack)
    out = tmp_path / "out"
    folder = out / "a_gwis.zarr"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("years of work")

    for flags in ([], ["--overwrite"]):
        status = main(["run", "gwis", "--blur", "1", str(source), "-o", str(out), "--format", "zarr", *flags])
        assert status == 1
        assert (folder / "notes.txt").read_text() == "years of work"
        assert "a_gwis.zarr" in _errors(capsys)[0]
    assert _leftovers(out) == []


def test_an_input_named_like_another_inputs_output_is_refused_before_anything_runs(tmp_path, stack, capsys):
    first, second = tmp_path / "a.tif", tmp_path / "a_gwis.tif"
    tifffile.imwrite(first, stack)
    tifffile.imwrite(second, stack[::-1])
    before = second.read_bytes()

    assert main(["run", "gwis", "--blur", "1", str(first), str(second), "-o", str(tmp_path)]) == 2
    assert second.read_bytes() == before
    assert "over the input" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "a_gwis.tif"]


def test_an_output_folder_that_cannot_be_made_is_one_usage_error(tmp_path, stack, capsys):
    source = tmp_path / "a.npy"
    np.save(source, stack)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["run", "gwis", "--blur", "1", str(source), "-o", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot create --output-dir" in err and "Traceback" not in err


# --------------------------------------------------------------------------- one bad input, batch goes on


def _header_only_tiff(path, shape) -> None:
    """A TIFF that declares ``shape`` but holds no pixel data (a few hundred bytes)."""
    tifffile.imwrite(path, shape=shape, dtype=np.uint8, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offset = tif.series[0].dataoffset
    with open(path, "r+b") as handle:
        handle.truncate(offset)


def test_a_tiny_tiff_declaring_a_huge_plane_is_refused_and_the_batch_goes_on(tmp_path, stack, capsys):
    bomb = tmp_path / "bomb.tif"
    _header_only_tiff(bomb, (40000, 40000))
    assert bomb.stat().st_size < 1000
    good = tmp_path / "good.npy"
    np.save(good, stack)
    out = tmp_path / "out"

    assert main(["run", "gwis", "--blur", "1", str(bomb), str(good), "-o", str(out)]) == 1
    (line,) = _errors(capsys)
    assert "bomb.tif" in line and "1,600,000,000" in line and "limit" in line
    assert sorted(p.name for p in out.iterdir()) == ["good_gwis.tif"]


def test_the_plane_limit_is_configurable(tmp_path, stack, capsys):
    import skimage.io

    png = tmp_path / "photo.png"
    skimage.io.imsave(png, (np.dstack([stack[0]] * 3) * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "out"
    args = ["run", "gwis", "--blur", "1", str(png), "-o", str(out)]
    assert main([*args, "--max-plane-megapixels", "0.001"]) == 1  # 40 x 44 x 3 = 5,280 values > 1,000
    assert "5,280" in _errors(capsys)[0]
    assert main(args) == 0


def test_a_fifo_is_refused_without_blocking(tmp_path, stack, capsys):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    good = tmp_path / "good.npy"
    np.save(good, stack)
    out = tmp_path / "out"

    assert main(["run", "gwis", "--blur", "1", str(fifo), str(good), "-o", str(out)]) == 1
    (line,) = _errors(capsys)
    assert "pipe.npy" in line and "not a regular file" in line
    assert sorted(p.name for p in out.iterdir()) == ["good_gwis.tif"]


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_a_full_disk_fails_one_input_leaves_nothing_and_the_batch_goes_on(
    tmp_path, stack, capsys, monkeypatch, fmt
):
    first, second = tmp_path / "first.npy", tmp_path / "second.npy"
    np.save(first, stack)
    np.save(second, stack)
    out = tmp_path / "out"
    calls = {"n": 0}
    real_pwrite = os.pwrite

    def disk_full_once(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 2:  # the second plane of the first file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    if fmt == "tif":
        monkeypatch.setattr(os, "pwrite", disk_full_once)
    else:  # zarr writes its chunks through its store: fail the first chunk write
        import zarr

        real_setitem = zarr.Array.__setitem__

        def chunk_write(self, key, value):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_setitem(self, key, value)

        monkeypatch.setattr(zarr.Array, "__setitem__", chunk_write)

    status = main(["run", "gwis", "--blur", "1", str(first), str(second), "-o", str(out), "--format", fmt])

    assert status == 1
    (line,) = _errors(capsys)
    assert "first.npy" in line and "No space left on device" in line
    assert sorted(p.name for p in out.iterdir()) == [f"second_gwis.{fmt}"]


def test_memory_errors_fail_one_input_and_the_batch_goes_on(tmp_path, stack, capsys, monkeypatch):
    from napari_deblur import engine

    real = engine.sharpen_gwis
    calls = {"n": 0}

    def out_of_memory_once(image, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("Unable to allocate 6.4 GiB")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(engine, "sharpen_gwis", out_of_memory_once)
    first, second = tmp_path / "first.npy", tmp_path / "second.npy"
    np.save(first, stack)
    np.save(second, stack)
    out = tmp_path / "out"

    assert main(["run", "gwis", "--blur", "1", str(first), str(second), "-o", str(out)]) == 1
    (line,) = _errors(capsys)
    assert "first.npy" in line and "not enough memory" in line
    assert sorted(p.name for p in out.iterdir()) == ["second_gwis.tif"]


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_sigterm_cleans_up_like_ctrl_c(tmp_path, stack, capsys, monkeypatch, fmt):
    from napari_deblur.engine.core import lazy

    def terminated(result, write, **_):
        index = next(lazy.plane_slices(tuple(result.shape), result.chunks))
        write(index, np.asarray(result[index]))
        yield lazy.JobProgress(0.5, "plane 1")
        os.kill(os.getpid(), signal.SIGTERM)
        yield lazy.JobProgress(0.6, "never reached")

    monkeypatch.setattr(lazy, "iter_compute_planes", terminated)
    source = tmp_path / "s.npy"
    np.save(source, stack)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)

    assert main(["run", "gwis", "--blur", "1", str(source), "-o", str(out), "--format", fmt]) == 143
    assert list(out.iterdir()) == []
    assert "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


# --------------------------------------------------------------------------- the writer itself


def test_saved_tiff_blocks_land_where_a_memory_map_would_put_them(tmp_path):
    import dask.array as da

    rng = np.random.default_rng(0)
    data = rng.random((3, 2, 17, 23, 3)).astype(np.float32)
    lazy = da.from_array(data, chunks=(1, 1, 17, 23, 3))
    path = tmp_path / "rgb.tif"
    steps = stack_files.iter_save_lazy(lazy, path, channel_axis=4, description="test")
    with pytest.raises(StopIteration) as done:
        while True:
            next(steps)
    assert done.value.value == path
    np.testing.assert_array_equal(tifffile.imread(path), data)
    assert stack_files.written_by_napari_deblur(path)
    assert _leftovers(tmp_path) == []


def test_save_dialog_policy_replaces_files_but_not_foreign_folders(tmp_path):
    import dask.array as da

    lazy = da.zeros((2, 8, 8), chunks=(1, 8, 8), dtype=np.float32)
    own_file = tmp_path / "x.tif"
    own_file.write_bytes(b"confirmed in the dialog")
    for _ in stack_files.iter_save_lazy(lazy, own_file, overwrite="files"):
        pass
    assert tifffile.imread(own_file).shape == (2, 8, 8)

    foreign = tmp_path / "y.zarr"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"keep")
    with pytest.raises(stack_files.StackFileError, match="did not write"):
        for _ in stack_files.iter_save_lazy(lazy, foreign, overwrite="files"):
            pass
    assert (foreign / "data.bin").read_bytes() == b"keep"
    assert not stack_files.written_by_napari_deblur(foreign)


def test_outputs_get_the_permissions_of_a_plainly_created_file(tmp_path, stack):
    source = tmp_path / "a.npy"
    np.save(source, stack)
    umask = os.umask(0o022)
    try:
        for fmt in ("tif", "zarr"):
            assert (
                main(["run", "gwis", "--blur", "1", str(source), "-o", str(tmp_path), "--format", fmt]) == 0
            )
    finally:
        os.umask(umask)
    assert (tmp_path / "a_gwis.tif").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a_gwis.zarr").stat().st_mode & 0o777 == 0o755


def test_a_pickled_npy_is_refused_without_suggesting_to_unpickle_it(tmp_path, stack, capsys):
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    good = tmp_path / "good.npy"
    np.save(good, stack)
    assert main(["run", "gwis", "--blur", "1", str(pickled), str(good), "-o", str(tmp_path / "o")]) == 1
    (line,) = _errors(capsys)
    assert "objects.npy" in line and "Python objects" in line and "allow_pickle" not in line

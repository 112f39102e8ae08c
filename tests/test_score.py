"""``harness score``: any image file or folder scored as training evaluations are; bad input is one line, exit 2."""

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.evaluation.features import HOLDOUT_FRACTION
from harness.evaluation.score import MIN_IMAGES, read_array, to_images
from harness.training.data import load_dataset, split_indices


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist-5k")


@pytest.fixture(scope="module")
def digits_u8(mnist_5k) -> np.ndarray:
    """The held-out digits moved right by one pixel, so none is a copy of a reference image: (500, 28, 28) uint8."""
    _, held = split_indices(len(mnist_5k), HOLDOUT_FRACTION, seed=0)
    u8 = ((mnist_5k.images[held, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    return np.roll(u8, 1, axis=2)


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and captured.out == "", captured
    return lines[0]


@pytest.mark.slow  # about 20 s: two scorings against the 5,000 reference images
def test_real_digits_score_well_and_noise_badly(digits_u8, tmp_path, capsys):
    np.save(tmp_path / "digits.npy", digits_u8)
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # float in [0, 1]
    torch.save(noise, tmp_path / "noise.pt")
    scores = {}
    for name in ("digits.npy", "noise.pt"):
        out = tmp_path / f"{name}.json"
        assert main(["score", str(tmp_path / name), "--json", str(out)]) == 0
        scores[name] = json.loads(out.read_text())
        printed = capsys.readouterr().out
        assert all(f"{k} " in printed for k in ("n", "fid", "kid", "precision", "recall", "recognizability"))
    digits, noise = scores["digits.npy"], scores["noise.pt"]
    assert digits["n"] == noise["n"] == 500 and digits["num_reference"] == 5000
    assert digits["recognizability"] >= 0.9 and noise["recognizability"] <= 0.05
    assert digits["fid"] < 0.01 * noise["fid"]  # 4.3 and 2559 measured (unshifted digits)
    assert digits["precision"] > 0.5 and noise["precision"] < 0.05


def test_every_format_reads_to_the_same_images(mnist_5k, digits_u8, tmp_path):
    from PIL import Image

    u8 = digits_u8[:12]
    np.save(tmp_path / "a.npy", u8)
    np.savez(tmp_path / "b.npz", images=u8[:, None], unused=np.zeros(3))
    torch.save(torch.from_numpy(u8).float().div(255), tmp_path / "c.pt")  # float in [0, 1], (N, H, W)
    (tmp_path / "pngs").mkdir()
    for i, img in enumerate(u8):
        Image.fromarray(img).save(tmp_path / "pngs" / f"{i:03d}.png")
    (tmp_path / "pngs" / "notes.txt").write_text("not an image, ignored")
    expected = torch.from_numpy(u8).float().unsqueeze(1) / 127.5 - 1
    for name in ("a.npy", "b.npz", "c.pt", "pngs"):
        path = tmp_path / name
        x = to_images(read_array(path, 1, 28), path, 1, 28)
        assert x.shape == (12, 1, 28, 28), name
        torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


def _save(path: Path, value):
    if isinstance(value, bytes):
        path.write_bytes(value)
    elif path.suffix == ".npy":
        np.save(path, value)
    else:
        torch.save(value, path)


def _quietly(make):
    """``make()`` without torch's prototype and deprecation warnings: the tensors are built only to be refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


BAD = [
    ("wrong.npy", np.zeros((20, 32, 32), np.uint8), "shape (20, 32, 32), expected (N, 28, 28) or (N, 1, 28, 28)"),
    ("rgb.npy", np.zeros((20, 3, 28, 28), np.uint8), "shape (20, 3, 28, 28)"),
    ("flat.npy", np.zeros((20, 784), np.uint8), "shape (20, 784)"),
    ("range.npy", np.full((20, 28, 28), 255.0, np.float32), "float values span [255, 255], expected [0, 1]"),
    ("negative.pt", torch.full((20, 1, 28, 28), -1.0), "float values span [-1, -1]"),
    (
        "nan.npy",
        np.where(np.arange(20 * 784).reshape(20, 28, 28) == 5, np.nan, 0.5).astype(np.float32),
        "1 values are NaN or infinite",
    ),
    ("int.npy", np.zeros((20, 28, 28), np.int64), "dtype int64, expected uint8 in [0, 255] or float in [0, 1]"),
    ("text.npy", np.full((20, 28, 28), "a"), "dtype <U1"),
    ("few.npy", np.zeros((MIN_IMAGES - 1, 28, 28), np.uint8), f"{MIN_IMAGES - 1} images, too few to score"),
    ("none.npy", np.zeros((0, 28, 28), np.uint8), "0 images, too few"),
    ("dict.pt", {"images": torch.zeros(20, 28, 28)}, "holds a dict, expected one tensor"),
    ("junk.npy", b"\x93NUMPY garbage", "cannot read it as .npy"),
    ("images.txt", b"1 2 3", "unknown kind of file"),
    # Tensors that torch.load(weights_only=True) accepts but that hold no plain image values.
    ("sparse.pt", torch.zeros(20, 1, 28, 28, dtype=torch.uint8).to_sparse(), "holds a sparse_coo tensor"),
    ("csr.pt", _quietly(lambda: torch.zeros(20 * 28, 28).to_sparse_csr()), "holds a sparse_csr tensor"),
    (
        "quantized.pt",
        _quietly(lambda: torch.quantize_per_tensor(torch.zeros(20, 1, 28, 28), 0.01, 0, torch.quint8)),
        "holds a quantized tensor (quint8)",
    ),
    ("meta.pt", torch.empty(20, 1, 28, 28, device="meta"), "holds a meta tensor, which holds no values"),
    ("nested.pt", _quietly(lambda: torch.nested.nested_tensor([torch.zeros(1, 28, 28)] * 20)), "holds a nested tensor"),
    ("complex.pt", torch.zeros(20, 1, 28, 28, dtype=torch.complex64), "dtype complex64, expected uint8"),
    ("complex.npy", np.zeros((20, 28, 28), np.complex64), "dtype complex64, expected uint8"),
    ("bool.pt", torch.zeros(20, 1, 28, 28, dtype=torch.bool), "dtype bool, expected uint8"),
]


@pytest.mark.parametrize("name, value, message", BAD, ids=[b[0] for b in BAD])
def test_bad_images_are_one_line_and_exit_2(name, value, message, tmp_path, capsys):
    path = tmp_path / name
    _save(path, value)
    line = error_line(capsys, ["score", str(path), "--json", str(tmp_path / "out.json")])
    assert line.startswith(f"error: {path}: ") and message in line
    assert not (tmp_path / "out.json").exists()


def test_pickles_are_never_loaded(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class MakesMarker:
        def __reduce__(self):
            return open, (str(marker), "w")

    np.save(tmp_path / "objects.npy", np.array([MakesMarker()], dtype=object), allow_pickle=True)
    torch.save({"x": MakesMarker()}, tmp_path / "evil.pt")
    np.savez(tmp_path / "evil.npz", np.array([MakesMarker()], dtype=object))
    for name in ("objects.npy", "evil.pt", "evil.npz"):
        line = error_line(capsys, ["score", str(tmp_path / name)])
        assert line.startswith(f"error: {tmp_path / name}: cannot read it as")
    assert not marker.exists()
    pickle.loads(pickle.dumps(MakesMarker()))  # armed: loading it with pickle does create the marker
    assert marker.exists()


def test_bad_folders_files_and_data_sets(tmp_path, capsys):
    from PIL import Image

    assert (
        error_line(capsys, ["score", str(tmp_path / "missing.npy")])
        == f"error: {tmp_path / 'missing.npy'}: no such file or folder"
    )
    (tmp_path / "empty").mkdir()
    assert (
        error_line(capsys, ["score", str(tmp_path / "empty")])
        == f"error: {tmp_path / 'empty'}: no .png files in this folder"
    )
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (28, 28)).save(mixed / "a.png")
    Image.new("L", (32, 32)).save(mixed / "b.png")
    assert error_line(capsys, ["score", str(mixed)]) == f"error: {mixed / 'b.png'}: 32x32 pixels, expected 28x28"
    (mixed / "b.png").write_bytes(b"not a png")
    assert error_line(capsys, ["score", str(mixed)]).startswith(f"error: {mixed / 'b.png'}: not a readable PNG")
    np.save(tmp_path / "ok.npy", np.zeros((20, 28, 28), np.uint8))
    line = error_line(capsys, ["score", str(tmp_path / "ok.npy"), "--dataset", "mnist-6k"])
    assert line.startswith("error: --dataset: unknown data set 'mnist-6k'; valid: ") and "mnist-5k" in line


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit grey pixels and holds none: only its header is ever read."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_image_bombs_are_refused_from_the_header(tmp_path, capsys, monkeypatch):
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(MIN_IMAGES):
        Image.new("L", (28, 28)).save(folder / f"{i:03d}.png")
    bomb = folder / "zz.png"
    # 2 * MAX_IMAGE_PIXELS + 1 pixels (about 179 million, 179 MB decoded): PIL itself refuses to open it.
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 1
    bomb.write_bytes(_png_header(side, side))
    line = error_line(capsys, ["score", str(folder), "--json", str(tmp_path / "out.json")])
    assert line.startswith(f"error: {bomb}: refused as a decompression bomb (Image size ({side * side} pixels)")
    # Between the limit and twice it, PIL only warns (and would decode): refused in one line all the same.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 28 * 28 - 1)
    Image.new("L", (28, 28)).save(bomb)
    line = error_line(capsys, ["score", str(folder), "--json", str(tmp_path / "out.json")])
    assert line.startswith(f"error: {folder / '000.png'}: refused as a decompression bomb")
    # Below the limit, a PNG of the wrong size is refused from its header, before its pixels are decoded.
    monkeypatch.undo()
    bomb.write_bytes(_png_header(29, 28))
    assert error_line(capsys, ["score", str(folder)]) == f"error: {bomb}: 29x28 pixels, expected 28x28"
    assert not (tmp_path / "out.json").exists()


def test_big_endian_arrays_read_as_their_values(digits_u8, tmp_path):
    floats = digits_u8[:12].astype(np.float32) / 255
    np.save(tmp_path / "be.npy", floats.astype(">f4"))
    x = to_images(read_array(tmp_path / "be.npy", 1, 28), tmp_path / "be.npy", 1, 28)
    torch.testing.assert_close(x, torch.from_numpy(floats).unsqueeze(1) * 2 - 1)

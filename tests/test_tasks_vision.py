"""Vision data: every local format, the real mnist-5k file, the fixed permutation, and malformed files."""
import gzip
import io

import numpy as np
import pytest
import torch
from conftest import DATA

from urlstm_triton.tasks.vision import (CIFAR10, MNIST, DataError, PixelSequences, fixed_permutation, load_hub,
                                         load_vision_data, read_local, split_train_test, vision_task)

MNIST_5K = DATA / "mnist-5k" / "mnist_5k.csv.gz"


def _images(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n,) + shape).astype(np.uint8), rng.integers(0, 10, size=n)


def _write_csv(path, pixels, labels, header=False):
    rows = [",".join(map(str, list(p) + [int(l)])) for p, l in zip(pixels.reshape(len(pixels), -1), labels)]
    text = ("h" + ",h" * pixels.reshape(len(pixels), -1).shape[1] + "\n" if header else "") + "\n".join(rows) + "\n"
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write(text)


def test_csv_gz_with_a_single_file_is_split_deterministically(tmp_path):
    x, y = _images(50, (28, 28))
    path = tmp_path / "digits.csv.gz"
    _write_csv(path, x, y)
    train, test = load_vision_data("smnist", str(path))
    assert train.images.shape == (40, 784, 1) and test.images.shape == (10, 784, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    # every image lands in exactly one split, with its own label, pixels in row-major order
    both = np.concatenate([train.images[:, :, 0], test.images[:, :, 0]])
    labels = np.concatenate([train.labels, test.labels])
    order = [int(np.flatnonzero((x.reshape(50, -1) == row).all(1))[0]) for row in both]
    assert sorted(order) == list(range(50)) and np.array_equal(labels, y[order])
    again = load_vision_data("smnist", str(path))
    assert np.array_equal(again[1].images, test.images)


def test_csv_with_header_and_label_first(tmp_path):
    x, y = _images(6, (784,))
    path = tmp_path / "kaggle.csv"
    rows = [",".join(map(str, [int(l)] + list(p))) for p, l in zip(x, y)]
    path.write_text("label," + ",".join(f"p{i}" for i in range(784)) + "\n" + "\n".join(rows) + "\n")
    data, none = read_local(path, MNIST, label_column="first")
    assert none is None and np.array_equal(data.labels, y) and np.array_equal(data.images[:, :, 0], x)


def test_npz_keras_layout_and_single_set(tmp_path):
    xtr, ytr = _images(8, (28, 28), 1)
    xte, yte = _images(4, (28, 28), 2)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    train, test = load_vision_data("pmnist", str(path))
    assert np.array_equal(train.images[:, :, 0], xtr.reshape(8, -1)) and np.array_equal(test.labels, yte)
    single = tmp_path / "one.npz"
    np.savez(single, x=xtr.reshape(8, -1).astype(np.float32), y=ytr)
    tr, te = load_vision_data("smnist", str(single), test_fraction=0.25)
    assert len(tr) == 6 and len(te) == 2


def test_cifar_layouts_agree(tmp_path):
    hwc, y = _images(3, (32, 32, 3))
    chw = hwc.transpose(0, 3, 1, 2)
    planes = chw.reshape(3, -1)
    np.savez(tmp_path / "a.npz", x=hwc, y=y)
    np.savez(tmp_path / "b.npz", x=chw, y=y)
    np.savez(tmp_path / "c.npz", x=planes, y=y)
    _write_csv(tmp_path / "d.csv", planes, y)
    seqs = [read_local(tmp_path / f, CIFAR10)[0].images for f in ("a.npz", "b.npz", "c.npz", "d.csv")]
    assert seqs[0].shape == (3, 1024, 3)
    # step t is pixel t in row-major order, with its R, G, B values
    assert np.array_equal(seqs[0][:, 33], hwc[:, 1, 1])
    for s in seqs[1:]:
        assert np.array_equal(s, seqs[0])


def test_parquet_flat_columns_and_encoded_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    x, y = _images(5, (28, 28))
    flat = {f"pixel{i}": x.reshape(5, -1)[:, i].astype(np.int64) for i in range(784)}
    flat["label"] = y
    pq.write_table(pa.table(flat), tmp_path / "flat.parquet")
    data, _ = read_local(tmp_path / "flat.parquet", MNIST)
    assert np.array_equal(data.images[:, :, 0], x.reshape(5, -1)) and np.array_equal(data.labels, y)

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    pq.write_table(pa.table({"image": [png(a) for a in x], "label": y}), tmp_path / "hub.parquet")
    hub, _ = read_local(tmp_path / "hub.parquet", MNIST)
    assert np.array_equal(hub.images, data.images)


def test_real_mnist_5k_file():
    if not MNIST_5K.exists():
        pytest.skip(f"{MNIST_5K} is not here")
    # the trainer's default path: relative to the project root
    train, test = load_vision_data("smnist", "data/mnist-5k/mnist_5k.csv.gz")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.images.shape == (4000, 784, 1) and train.images.max() == 255
    assert set(np.unique(test.labels)) == set(range(10))
    counts = np.bincount(np.concatenate([train.labels, test.labels]))
    assert (counts == 500).all()


def test_fixed_permutation_is_shared_by_splits_and_runs(tmp_path):
    x, y = _images(20, (784,))
    _write_csv(tmp_path / "d.csv", x, y)
    train, test = load_vision_data("pmnist", str(tmp_path / "d.csv"))
    perm = fixed_permutation(784, seed=5)
    assert torch.equal(perm, fixed_permutation(784, seed=5))
    assert not torch.equal(perm, fixed_permutation(784, seed=6))
    assert sorted(perm.tolist()) == list(range(784))
    for part in (train, test):
        ds = PixelSequences(part, perm)
        for i in range(len(part)):
            xi, yi = ds[i]
            assert xi.shape == (784, 1) and xi.dtype == torch.float32
            expected = torch.from_numpy(part.images[i, :, 0]).float()[perm] / 255
            assert torch.equal(xi[:, 0], expected) and yi == part.labels[i]


def test_split_is_deterministic_and_disjoint():
    x, y = _images(30, (784, 1))
    from urlstm_triton.tasks.vision import ImageSet

    a = split_train_test(ImageSet(x, y), 0.2, seed=0)
    b = split_train_test(ImageSet(x, y), 0.2, seed=0)
    assert np.array_equal(a[0].images, b[0].images) and len(a[1]) == 6


@pytest.mark.parametrize("content, problem", [
    ("1,2,3\n", "line 2 has 3 columns, expected 785"),
    (",".join(["0"] * 784 + ["10"]) + "\n", "label of line 2 is 10, outside the classes 0..9"),
    (",".join(["0"] * 784 + ["-1"]) + "\n", "outside the classes 0..9"),
    (",".join(["0"] * 783 + ["300", "3"]) + "\n", "pixel 783 of line 2 is 300, outside 0..255"),
    (",".join(["0"] * 783 + ["-2", "3"]) + "\n", "outside 0..255"),
    (",".join(["0.5"] * 784 + ["3"]) + "\n", "not an integer in 0..255"),
    (",".join(["0"] * 784 + ["x"]) + "\n", "not a number"),
    ("", "holds no image rows"),
])
def test_malformed_csv_names_the_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(["0"] * 784 + ["1"]) + "\n" + content if content else "")
    with pytest.raises(DataError) as err:
        load_vision_data("smnist", str(path))
    assert str(path) in str(err.value) and problem in str(err.value)


def test_malformed_npz_and_parquet(tmp_path):
    x, y = _images(4, (28, 28))
    np.savez(tmp_path / "k.npz", images_=x, y=y)
    with pytest.raises(DataError, match="expected arrays x_train"):
        load_vision_data("smnist", str(tmp_path / "k.npz"))
    np.savez(tmp_path / "s.npz", x=x[:, :20], y=y)
    with pytest.raises(DataError, match=r"s\.npz.*shape \(4, 20, 28\) do not fit mnist"):
        load_vision_data("smnist", str(tmp_path / "s.npz"))
    np.savez(tmp_path / "n.npz", x=x, y=y[:3])
    with pytest.raises(DataError, match="holds 4 images but 'y' holds 3 labels"):
        load_vision_data("smnist", str(tmp_path / "n.npz"))
    np.savez(tmp_path / "l.npz", x=x, y=np.array([0, 1, 2, 12]))
    with pytest.raises(DataError, match=r"l\.npz \['y'\]: label of image 3 is 12"):
        load_vision_data("smnist", str(tmp_path / "l.npz"))
    (tmp_path / "z.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"z\.npz: cannot be read"):
        load_vision_data("smnist", str(tmp_path / "z.npz"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2], "label": [0, 1]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet: has 1 pixel columns besides 'label', expected 784"):
        load_vision_data("smnist", str(tmp_path / "p.parquet"))
    (tmp_path / "d.txt").write_text("1")
    with pytest.raises(DataError, match="unknown data format"):
        load_vision_data("smnist", str(tmp_path / "d.txt"))
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_vision_data("smnist", str(tmp_path / "nowhere.csv"))


def test_unknown_task_and_unreachable_hub(monkeypatch):
    with pytest.raises(ValueError, match="unknown vision task 'mnist'.*smnist"):
        vision_task("mnist")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="point --data at a local file"):
        load_hub(MNIST, "no-such-user/no-such-dataset")


def test_hub_loader_reads_a_local_data_set_directory(tmp_path, monkeypatch):
    # `datasets.load_dataset` takes a local directory as well as a hub name: the hub path, without the network
    import datasets
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    x, y = _images(6, (32, 32, 3))
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    for split, sl in (("train", slice(0, 4)), ("test", slice(4, 6))):
        ds = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in x[sl]], "label": y[sl].tolist()},
                                        features=features)
        ds.to_parquet(str(tmp_path / "hub" / f"{split}.parquet"))
    train, test = load_vision_data("scifar", hub_name=str(tmp_path / "hub"))
    assert train.images.shape == (4, 1024, 3) and len(test) == 2
    assert np.array_equal(train.images, x[:4].reshape(4, 1024, 3)) and np.array_equal(test.labels, y[4:])

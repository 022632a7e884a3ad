"""In-memory datasets: digits from scikit-learn, and mnist / cifar10 / ptb from
tiny files generated here in the official layouts."""

import os
import pickle

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.workers.data import ImageDataset, TextDataset, load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_npz(path, rng, n_train, n_test, shape):
    np.savez(path, x_train=_images(rng, n_train, shape), y_train=np.arange(n_train) % 10,
             x_test=_images(rng, n_test, shape), y_test=np.arange(n_test) % 10)
    return path


def _write_cifar_batches(folder, rng, per_batch=6):
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": _images(rng, per_batch, (3072,)), b"labels": list(range(per_batch))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_digits_split_and_normalisation(digits):
    assert isinstance(digits, ImageDataset)
    assert digits.sizes == {"train": 1438, "val": 359, "test": 0}
    assert sum(digits.sizes.values()) == 1797
    assert (digits.in_channels, digits.image_size, digits.num_classes) == (1, 8, 10)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    # Normalised by the training split's own statistics.
    assert digits.x_train.mean().abs() < 1e-4
    assert abs(digits.x_train.std().item() - 1) < 1e-3
    assert digits.info()["sizes"] == digits.sizes and not digits.augment
    assert digits.to("cpu") is digits


def test_digits_split_is_seeded(digits):
    same = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(same.x_val, digits.x_val) and torch.equal(same.y_train, digits.y_train)
    assert not torch.equal(other.y_val, digits.y_val)
    small = load_dataset("digits", val_fraction=0.1, max_train=100)
    assert small.sizes == {"train": 100, "val": 180, "test": 0}


def test_train_batches_cover_the_epoch_and_follow_the_generator(digits):
    def epoch(seed, **kw):
        return list(digits.train_batches(64, torch.Generator().manual_seed(seed), **kw))

    batches = epoch(0)
    assert len(batches) == -(-1438 // 64) and len(batches[-1][1]) == 1438 % 64
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, digits.y_train.sort().values)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, epoch(0)))
    assert not torch.equal(batches[0][0], epoch(1)[0][0])
    assert len(epoch(0, max_batches=3)) == 3
    val = list(digits.eval_batches("val", batch_size=100))
    assert [len(y) for _, y in val] == [100, 100, 100, 59]
    with pytest.raises(ConfigError, match="split"):
        list(digits.eval_batches("test"))


def test_mnist_from_npz_file_or_folder(tmp_path):
    rng = np.random.default_rng(0)
    path = _write_npz(tmp_path / "mnist.npz", rng, 50, 20, (28, 28))
    for where in (path, tmp_path):
        data = load_dataset("mnist", where, val_fraction=0.2)
        assert data.sizes == {"train": 40, "val": 10, "test": 20}
        assert (data.in_channels, data.image_size) == (1, 28)
        assert not data.augment


def test_cifar10_from_npz_and_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    npz = load_dataset("cifar10", _write_npz(tmp_path / "c.npz", rng, 30, 10, (32, 32, 3)))
    assert npz.sizes == {"train": 27, "val": 3, "test": 10}
    assert (npz.in_channels, npz.image_size) == (3, 32) and npz.augment
    assert npz.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4

    folder = _write_cifar_batches(tmp_path / "cifar-10-batches-py", rng)
    batches = load_dataset("cifar10", folder, val_fraction=0.2)
    assert batches.sizes == {"train": 24, "val": 6, "test": 6}
    # The standard extraction folder is found inside its parent too.
    assert load_dataset("cifar10", tmp_path, val_fraction=0.2).sizes == batches.sizes


def test_cifar10_augmentation_is_a_crop_or_flip_of_a_training_image(tmp_path):
    data = load_dataset("cifar10", _write_npz(tmp_path / "c.npz", np.random.default_rng(0), 12, 2, (32, 32, 3)))
    padded = torch.nn.functional.pad(data.x_train, (4, 4, 4, 4))
    candidates = torch.stack([
        view for dy in range(9) for dx in range(9)
        for view in (padded[..., dy:dy + 32, dx:dx + 32], padded[..., dy:dy + 32, dx:dx + 32].flip(-1))
    ], dim=1)  # (n, 162, c, h, w)
    (x, y), = data.train_batches(16, torch.Generator().manual_seed(0))
    assert x.shape == (11, 3, 32, 32)
    for image, label in zip(x, y):
        matches = (candidates == image).flatten(2).all(2)
        assert matches.any(), "augmented image is no crop/flip of any training image"
        assert (data.y_train[matches.any(1)] == label).all()
    assert not all((data.x_train == image).flatten(1).all(1).any() for image in x), "nothing was augmented"
    unaugmented = load_dataset("cifar10", tmp_path / "c.npz", augment=False)
    (x, _), = unaugmented.train_batches(16, torch.Generator().manual_seed(0))
    assert all((unaugmented.x_train == image).flatten(1).all(1).any() for image in x)


def test_ptb_vocabulary_and_streams(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" the cat sat \n the <unk> ran \n")
    (tmp_path / "ptb.valid.txt").write_text(" the dog sat \n")
    (tmp_path / "ptb.test.txt").write_text(" cat ran \n")
    data = load_dataset("ptb", tmp_path)
    assert isinstance(data, TextDataset)
    assert data.vocab == ("the", "cat", "sat", "<eos>", "<unk>", "ran")
    assert data.sizes == {"train": 8, "val": 4, "test": 3}
    # "dog" is not in the training vocabulary: it reads as <unk>.
    assert [data.vocab[i] for i in data.val] == ["the", "<unk>", "sat", "<eos>"]
    assert data.batchify("train", 2).shape == (4, 2)
    assert data.batchify("train", 2)[:, 1].tolist() == data.train[4:].tolist()
    assert load_dataset("ptb", tmp_path, max_train=5).sizes["train"] == 5
    (tmp_path / "ptb.train.txt").write_text("the cat\n")
    with pytest.raises(ConfigError, match="dog"):
        load_dataset("ptb", tmp_path)


@pytest.mark.parametrize("kwargs, field, text", [
    ({"name": "imagenet"}, "dataset", "digits"),
    ({"name": "mnist"}, "data_path", "--data"),
    ({"name": "cifar10", "path": "/no/such/dir"}, "data_path", "not found"),
    ({"name": "ptb", "path": "/no/such/dir"}, "data_path", "ptb.train.txt"),
    ({"name": "digits", "path": "/tmp"}, "data_path", "scikit-learn"),
    ({"name": "digits", "augment": True}, "augment", "cifar10"),
    ({"name": "digits", "val_fraction": 1.5}, "val_fraction", "between"),
    ({"name": "digits", "max_train": 0}, "max_train", "positive"),
])
def test_bad_arguments_name_the_field(kwargs, field, text):
    with pytest.raises(ConfigError) as exc:
        load_dataset(**kwargs)
    assert exc.value.field == field and text in str(exc.value)


def test_bad_files_name_the_expected_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .npz file.*x_train"):
        load_dataset("mnist", tmp_path / "empty")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="missing arrays y_train"):
        load_dataset("mnist", tmp_path / "partial.npz")
    folder = _write_cifar_batches(tmp_path / "cifar", np.random.default_rng(0))
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="not found: .*data_batch_3"):
        load_dataset("cifar10", folder)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="cannot read .*data_batch_3"):
        load_dataset("cifar10", folder)
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(ConfigError, match="not found: .*ptb.valid.txt"):
        load_dataset("ptb", tmp_path / "ptb")


class _Planted:
    """What an attacker plants: unpickling it creates `marker` (in real life: any command)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_load_through_the_restricted_unpickler(tmp_path, protocol):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"training batch", b"data": _images(rng, 4, (3072,)), b"labels": [1, 2, 3, 4],
                 b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]}
        raw = pickle.dumps(batch, protocol=protocol)
        if protocol == 2:
            # The published files were written by numpy 1 and name numpy.core (a text line at protocol 2).
            raw = raw.replace(b"numpy._core", b"numpy.core")
        (folder / name).write_bytes(raw)
    data = load_dataset("cifar10", folder, val_fraction=0.25)
    assert data.sizes == {"train": 15, "val": 5, "test": 4}


@pytest.mark.parametrize("payload", [
    lambda marker: {b"data": _Planted(marker), b"labels": [0]},
    lambda marker: {b"data": np.array([_Planted(marker)], dtype=object), b"labels": [0]},
])
def test_a_planted_pickle_never_runs(tmp_path, payload):
    folder = _write_cifar_batches(tmp_path / "cifar", np.random.default_rng(0))
    marker = tmp_path / "owned"
    (folder / "data_batch_2").write_bytes(pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(ConfigError, match="cannot read .*data_batch_2.*not allowed"):
        load_dataset("cifar10", folder)
    assert not marker.exists()


def test_data_paths_outside_the_roots_are_refused_alike(tmp_path):
    from raynas.workers.data import check_data_root

    root = tmp_path / "data"
    (root / "cifar").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "unreadable").mkdir(mode=0)
    (root / "escape").symlink_to(tmp_path / "secret")
    inside = os.path.realpath(root / "cifar")
    assert check_data_root(str(root / "cifar"), [str(root)]) == check_data_root("cifar", [str(root)]) == inside
    messages = set()
    for probe in (tmp_path / "secret", tmp_path / "secret" / "unreadable", tmp_path / "missing", root / "escape",
                  root / ".." / "secret", "../secret", "/etc"):
        with pytest.raises(ConfigError) as refused:
            check_data_root(str(probe), [str(root)])
        assert refused.value.field == "data_path"
        messages.add(refused.value.problem)
    assert len(messages) == 1 and "secret" not in messages.pop()  # nothing tells an existing path from a missing one
    with pytest.raises(ConfigError, match="--data-root"):
        check_data_root(str(root / "cifar"), [])

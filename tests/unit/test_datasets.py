"""The datasets' own behaviour beyond the contract (tests/contract/test_dataset_contract.py): the
built-ins' layouts and errors, the CIFAR-10 unpickler against planted pickles, PTB's vocabulary,
your own image folders, arrays and segmentation folders, memory against disk, and the service's
data roots."""

import os
import pickle

import datafiles
import numpy as np
import pytest
import torch
from imports import imported

from raynas.common import ConfigError, DataError
from raynas.workers.datasets import get_dataset, load_dataset
from raynas.workers.datasets.arrays import load_digits
from raynas.workers.datasets.images import IGNORE_INDEX, MemorySource
from raynas.workers.datasets.text import TextData


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_digits_split_and_normalisation(digits):
    assert digits.sizes == {"train": 1438, "val": 359, "test": 0}
    assert (digits.in_channels, digits.image_size, digits.num_classes) == (1, 8, 10)
    x, y = digits.tensors("train")
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    # Normalised by the training split's own statistics.
    assert x.mean().abs() < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert digits.info()["sizes"] == digits.sizes and not digits.augment
    assert digits.to("cpu") is digits
    assert digits.preprocessing()["input"] == {"dtype": "float32", "channels": 1, "height": 8, "width": 8,
                                               "resize": None}


def test_the_digits_are_scikit_learns_without_importing_it():
    from sklearn.datasets import load_digits as sklearn_digits

    images, labels = load_digits()
    bunch = sklearn_digits()
    assert np.array_equal(images, bunch.images.astype(np.float32)) and np.array_equal(labels, bunch.target)
    assert images.dtype == np.float32 and labels.dtype == np.int64
    # The point of the copy: every worker loads the digits, and scikit-learn costs ~2 s of CPU to import.
    assert not imported("from raynas.workers.datasets import load_dataset; load_dataset('digits')", "sklearn")


def test_digits_split_is_seeded(digits):
    same = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(same.tensors("val")[0], digits.tensors("val")[0])
    assert not torch.equal(other.tensors("val")[1], digits.tensors("val")[1])
    small = load_dataset("digits", val_fraction=0.1, max_train=100)
    assert small.sizes == {"train": 100, "val": 180, "test": 0}


def test_train_batches_cover_the_epoch_and_follow_the_generator(digits):
    def epoch(seed, **kw):
        return list(digits.train_batches(64, torch.Generator().manual_seed(seed), **kw))

    batches = epoch(0)
    assert len(batches) == -(-1438 // 64) and len(batches[-1][1]) == 1438 % 64
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, digits.tensors("train")[1].sort().values)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, epoch(0)))
    assert not torch.equal(batches[0][0], epoch(1)[0][0])
    assert len(epoch(0, max_batches=3)) == 3
    val = list(digits.eval_batches("val", batch_size=100))
    assert [len(y) for _, y in val] == [100, 100, 100, 59]
    with pytest.raises(ConfigError, match="split"):
        list(digits.eval_batches("test"))


def test_mnist_from_npz_file_or_folder(tmp_path):
    path = datafiles.mnist_npz(tmp_path / "mnist.npz")
    for where in (path, tmp_path):
        data = load_dataset("mnist", where, val_fraction=0.2)
        assert data.sizes == {"train": 40, "val": 10, "test": 20}
        assert (data.in_channels, data.image_size) == (1, 28)
        assert not data.augment


def test_cifar10_from_npz_and_python_batches(tmp_path):
    npz = load_dataset("cifar10", datafiles.cifar_npz(tmp_path / "c.npz"))
    assert npz.sizes == {"train": 27, "val": 3, "test": 10}
    assert (npz.in_channels, npz.image_size) == (3, 32) and npz.augment
    assert npz.tensors("train")[0].mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert npz.class_names[0] == "airplane"

    folder = datafiles.cifar_batches(tmp_path / "cifar-10-batches-py")
    batches = load_dataset("cifar10", folder, val_fraction=0.2)
    assert batches.sizes == {"train": 24, "val": 6, "test": 6}
    # The standard extraction folder is found inside its parent too.
    assert load_dataset("cifar10", tmp_path, val_fraction=0.2).sizes == batches.sizes


def test_augmentation_is_a_crop_or_flip_of_a_training_image(tmp_path):
    data = load_dataset("cifar10", datafiles.cifar_npz(tmp_path / "c.npz", 12, 2))
    train_x, train_y = data.tensors("train")
    padded = torch.nn.functional.pad(train_x, (4, 4, 4, 4))
    candidates = torch.stack([
        view for dy in range(9) for dx in range(9)
        for view in (padded[..., dy:dy + 32, dx:dx + 32], padded[..., dy:dy + 32, dx:dx + 32].flip(-1))
    ], dim=1)  # (n, 162, c, h, w)
    (x, y), = data.train_batches(16, torch.Generator().manual_seed(0))
    assert x.shape == (11, 3, 32, 32)
    for image, label in zip(x, y):
        matches = (candidates == image).flatten(2).all(2)
        assert matches.any(), "augmented image is no crop/flip of any training image"
        assert (train_y[matches.any(1)] == label).all()
    assert not all((train_x == image).flatten(1).all(1).any() for image in x), "nothing was augmented"
    unaugmented = load_dataset("cifar10", tmp_path / "c.npz", augment=False)
    (x, _), = unaugmented.train_batches(16, torch.Generator().manual_seed(0))
    assert all((unaugmented.tensors("train")[0] == image).flatten(1).all(1).any() for image in x)


def test_ptb_vocabulary_and_streams(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" the cat sat \n the <unk> ran \n")
    (tmp_path / "ptb.valid.txt").write_text(" the dog sat \n")
    (tmp_path / "ptb.test.txt").write_text(" cat ran \n")
    data = load_dataset("ptb", tmp_path)
    assert isinstance(data, TextData)
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


def test_a_text_folder_takes_val_txt_too(tmp_path):
    datafiles.text_folder(tmp_path, ("train.txt", "val.txt", "test.txt"))
    data = load_dataset("text-folder", tmp_path)
    assert data.sizes["val"] == 40 * 13  # 40 lines of 12 words and <eos>


@pytest.mark.parametrize("kwargs, field, text", [
    ({"name": "imagenet"}, "dataset", "digits"),
    ({"name": "mnist"}, "data_path", "--data"),
    ({"name": "cifar10", "path": "/no/such/dir"}, "data_path", "not found"),
    ({"name": "ptb", "path": "/no/such/dir"}, "data_path", "ptb.train.txt"),
    ({"name": "image-folder"}, "data_path", "subfolder"),
    ({"name": "digits", "path": "/tmp"}, "data_path", "takes no --data"),
    ({"name": "digits-seg", "augment": True}, "dataset_options.augment", "classification"),
    ({"name": "digits", "val_fraction": 1.5}, "dataset_options.val_fraction", "between"),
    ({"name": "digits", "max_train": 0}, "dataset_options.max_train", "positive"),
    ({"name": "digits", "max_train": 10**12}, "dataset_options.max_train", "at most"),
    ({"name": "digits", "stream": "disk"}, "dataset_options.stream", "not an option of the digits dataset"),
    ({"name": "image-folder", "path": "/tmp", "stream": "tape"}, "dataset_options.stream", "disk"),
    ({"name": "image-folder", "path": "/tmp", "loader_workers": 1000}, "dataset_options.loader_workers", "64"),
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
    folder = datafiles.cifar_batches(tmp_path / "cifar")
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


# -- your own data ----------------------------------------------------------------------------------


def test_an_image_folder_in_either_layout(tmp_path):
    split = load_dataset("image-folder", datafiles.image_folder(tmp_path / "split", 60, 20, val=10))
    assert split.sizes == {"train": 60, "val": 10, "test": 20}
    assert split.class_names[:2] == ("airplane", "automobile") and split.num_classes == 10
    assert split.preprocessing()["input"]["dtype"] == "uint8"
    flat = load_dataset("image-folder", datafiles.image_folder(tmp_path / "flat", 60, split=False), seed=1)
    assert flat.sizes == {"train": 54, "val": 6, "test": 0}
    # PNG is lossless: the folder's images are the arrays', normalised.
    x, y = split.tensors("test")
    raw = datafiles.cifar(60, 20)
    expected = torch.from_numpy(raw["x_test"].transpose(0, 3, 1, 2)).float()
    mean, std = torch.tensor(split.mean)[:, None, None], torch.tensor(split.std)[:, None, None]
    order = np.argsort(raw["y_test"], kind="stable")  # the folder lists a class at a time
    assert torch.allclose(x * std + mean, expected[order], atol=1e-3)
    assert torch.equal(y, torch.from_numpy(raw["y_test"][order]))


def test_an_image_folder_resizes_greys_and_refuses_strangers(tmp_path):
    root = datafiles.image_folder(tmp_path / "img", 20, 10)
    small = load_dataset("image-folder", root, image_size=16, grayscale=True)
    assert small.tensors("val")[0].shape[1:] == (1, 16, 16)
    assert "centre 16x16" in small.preprocessing()["input"]["resize"]
    datafiles.png(root / "test" / "unicorn" / "0.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ConfigError, match="unicorn.*is a class the training folder"):
        load_dataset("image-folder", root)
    (root / "test" / "unicorn" / "0.png").unlink()
    (root / "test" / "unicorn").rmdir()
    (root / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="^cannot decode .*broken.png"):
        load_dataset("image-folder", root)
    with pytest.raises(DataError, match="^cannot decode .*broken.png"):
        for _ in load_dataset("image-folder", root, stream="disk").train_batches(100, torch.Generator()):
            pass


def test_memory_and_disk_give_the_same_batches(tmp_path):
    root = datafiles.image_folder(tmp_path / "img", 48, 8)
    memory = load_dataset("image-folder", root, stream="memory")
    disk = load_dataset("image-folder", root, stream="disk", loader_workers=2)
    assert isinstance(memory.source, MemorySource) and not isinstance(disk.source, MemorySource)
    assert disk.info()["stored"] == "disk"
    # A streamed set is normalised by a sample of its training images: here all of them.
    assert np.allclose(memory.mean, disk.mean, atol=1e-3) and np.allclose(memory.std, disk.std, atol=1e-3)
    for a, b in zip(memory.train_batches(10, torch.Generator().manual_seed(4)),
                    disk.train_batches(10, torch.Generator().manual_seed(4))):
        assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0], atol=1e-4)


def test_arrays_from_npz_or_memory_mapped_npy(tmp_path):
    npz = load_dataset("arrays", datafiles.arrays_npz(tmp_path / "a.npz", 40, 10))
    assert npz.sizes == {"train": 36, "val": 4, "test": 10} and npz.class_names[-1] == "truck"
    npy = load_dataset("arrays", datafiles.arrays_npy(tmp_path / "npy", 40, 10), stream="disk")
    assert npy.sizes == npz.sizes and not isinstance(npy.source, MemorySource)
    assert isinstance(npy.source.reader.parts[0][0], np.memmap)
    with pytest.raises(ConfigError, match="^dataset_options.stream.*npy"):
        load_dataset("arrays", tmp_path / "a.npz", stream="disk")
    np.save(tmp_path / "npy" / "y_test.npy", np.full(10, 12))
    with pytest.raises(ConfigError, match="labels of y_test must lie in 0..9"):
        load_dataset("arrays", tmp_path / "npy")
    np.savez(tmp_path / "table.npz", x_train=np.zeros((10, 5)), y_train=np.zeros(10, int))
    with pytest.raises(ConfigError, match=r"\(10, 5\).*neither"):
        load_dataset("arrays", tmp_path / "table.npz")


def test_a_segmentation_folder(tmp_path):
    root = datafiles.seg_folder(tmp_path / "seg")
    data = load_dataset("seg-folder", root)
    assert data.num_classes == 11 and data.class_names[0] == "background" and data.task == "segmentation"
    assert data.sizes == {"train": 32, "val": 8, "test": 10}
    _, masks = data.tensors("test")
    assert masks.shape == (10, 32, 32) and IGNORE_INDEX in masks.unique().tolist()
    (root / "train" / "masks" / "0003.png").unlink()
    with pytest.raises(ConfigError, match="0003.png has no mask"):
        load_dataset("seg-folder", root)


def test_cityscapes_layout_and_official_train_ids(tmp_path):
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    root = datafiles.cityscapes_folder(tmp_path)
    data = load_dataset("cityscapes", root, val_fraction=0.5)
    assert data.task == "segmentation" and data.num_classes == 19 and data.class_names[0] == "road"
    assert data.sizes == {"train": 3, "val": 3, "test": 3}
    x, y = data.tensors("test")
    assert x.shape[1:] == (3, 64, 128) and y.shape[1:] == (64, 128)
    road, car = labels.name2label["road"].trainId, labels.name2label["car"].trainId
    assert (y[:, :32] == road).all() and (y[:, 32:, :64] == car).all()
    assert (y[:, 32:, 64:] == IGNORE_INDEX).all()
    (root / "gtFine" / "val" / "lindau" / "lindau_000000_000000_gtFine_labelIds.png").unlink()
    with pytest.raises(ConfigError, match="^data_path.*no label file"):
        load_dataset("cityscapes", root)


def test_voc_layout(tmp_path):
    root = datafiles.voc_folder(tmp_path)
    data = load_dataset("voc", root, val_fraction=0.5)
    assert data.num_classes == 21 and data.sizes == {"train": 1, "val": 1, "test": 1}
    x, y = data.tensors("test")
    assert x.shape[1:] == (3, 128, 128)
    assert set(y.unique().tolist()) == {0, 15, IGNORE_INDEX}
    with pytest.raises(ConfigError, match="^data_path"):
        load_dataset("voc", root / "VOCdevkit" / "VOC2012" / "JPEGImages")


def test_the_fingerprint_changes_with_the_files(tmp_path):
    root = datafiles.image_folder(tmp_path / "img", 20, 10)
    dataset = get_dataset("image-folder", root)
    before = dataset.fingerprint()
    assert before == get_dataset("image-folder", str(root)).fingerprint()
    (root / "train" / "cat" / "train_00003.png").unlink()
    assert dataset.fingerprint() != before
    assert get_dataset("digits").fingerprint() is None


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
    folder = datafiles.cifar_batches(tmp_path / "cifar")
    marker = tmp_path / "owned"
    (folder / "data_batch_2").write_bytes(pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(ConfigError, match="cannot read .*data_batch_2.*not allowed"):
        load_dataset("cifar10", folder)
    assert not marker.exists()


def test_data_paths_outside_the_roots_are_refused_alike(tmp_path):
    from raynas.workers.datasets import check_data_root

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

"""The contract every dataset keeps (workers/datasets/base.py), run on each registered one, built
in or plugged in, on tiny data written here in its layout (tests/datafiles.py): the task it
declares, splits that are disjoint and drawn by the seed, batches of the declared shape that follow
the caller's generator whether they come from memory or disk, every evaluation sample once, the
final training's and one-shot searches' views, normalisation by the training split, plain-data
descriptions, a reference that pickles (a plan carries it to every worker), and bad options named
by field."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import datafiles
import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.workers.datasets import LANGUAGE_MODEL, Dataset, dataset_names, get_dataset
from raynas.workers.datasets.images import MemorySource

#: A tiny instance of each dataset (and of some of their variants), given a folder to write into.
FACTORIES: dict[str, Callable[[Path], Dataset]] = {
    "digits": lambda tmp: get_dataset("digits"),
    "digits-seg": lambda tmp: get_dataset("digits-seg", options={"max_train": 64}),
    "mnist": lambda tmp: get_dataset("mnist", datafiles.mnist_npz(tmp / "mnist.npz")),
    "cifar10": lambda tmp: get_dataset("cifar10", datafiles.cifar_batches(tmp / "cifar-10-batches-py")),
    "ptb": lambda tmp: get_dataset("ptb", datafiles.ptb_folder(tmp / "ptb")),
    "text-folder": lambda tmp: get_dataset("text-folder", datafiles.text_folder(tmp / "corpus")),
    "arrays": lambda tmp: get_dataset("arrays", datafiles.arrays_npz(tmp / "a.npz", 60, 20)),
    "arrays (npy, disk)": lambda tmp: get_dataset("arrays", datafiles.arrays_npy(tmp / "npy", 60, 20),
                                                  {"stream": "disk"}),
    "image-folder": lambda tmp: get_dataset("image-folder", datafiles.image_folder(tmp / "img", 60, 20)),
    "image-folder (flat, disk)": lambda tmp: get_dataset(
        "image-folder", datafiles.image_folder(tmp / "img", 60, split=False, suffix=".jpg"),
        {"stream": "disk", "loader_workers": 2, "image_size": 24}),
    "seg-folder": lambda tmp: get_dataset("seg-folder", datafiles.seg_folder(tmp / "seg")),
    "seg-folder (disk)": lambda tmp: get_dataset("seg-folder", datafiles.seg_folder(tmp / "seg"),
                                                 {"stream": "disk", "loader_workers": 0}),
    "cityscapes": lambda tmp: get_dataset("cityscapes", datafiles.cityscapes_folder(tmp / "cs"),
                                          {"val_fraction": 0.5}),
    "voc": lambda tmp: get_dataset("voc", datafiles.voc_folder(tmp / "voc"), {"val_fraction": 0.5}),
}


def test_every_registered_dataset_has_a_case():
    assert set(dataset_names()) <= {name.split(" ")[0] for name in FACTORIES}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def dataset(request, tmp_path_factory) -> Dataset:
    if request.param.startswith("cityscapes"):
        pytest.importorskip("cityscapesscripts")
    return FACTORIES[request.param](tmp_path_factory.mktemp("data"))


def test_the_dataset_keeps_the_contract(dataset):
    check_dataset(dataset)


def check_dataset(dataset: Dataset, seed: int = 3) -> None:
    """The whole contract, for any dataset; a plug-in's own tests call it too."""
    data = dataset.load(seed)
    assert data.task == dataset.task and data.name == dataset.name
    for described in (data.info(), data.preprocessing(), dataset.describe()):
        json.dumps(described)
    assert data.sizes["train"] > 0 and data.sizes["val"] > 0
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.load(seed).sizes == data.sizes
    with pytest.raises(ConfigError) as bad:
        type(dataset)(dataset.path, {"no_such_option": 1})
    assert bad.value.field == "dataset_options.no_such_option"
    if data.task == LANGUAGE_MODEL:
        _check_text(data)
    else:
        _check_images(dataset, data, seed)


def _check_text(data) -> None:
    for split in ("train", "val", "test"):
        stream = getattr(data, split)
        assert stream.dtype == torch.int64 and 0 <= int(stream.min()) and int(stream.max()) < data.vocab_size
    assert data.batchify("train", 2).shape == (data.sizes["train"] // 2, 2)
    assert len(data.preprocessing()["vocab"]) == data.vocab_size


def _check_images(dataset: Dataset, data, seed: int) -> None:
    splits = data.splits
    parts = [set(splits[s].tolist()) for s in splits if s != "test" or "val" in splits]
    assert sum(len(p) for p in parts) == len(set().union(*parts)), "splits overlap"
    assert all(np.array_equal(splits[s], dataset.load(seed).splits[s]) for s in splits), "the seed fixes the splits"
    channels, height, width = data.in_channels, data.raw["height"], data.raw["width"]
    prep = data.preprocessing()
    assert len(prep["mean"]) == len(prep["std"]) == channels and len(prep["class_names"]) == data.num_classes

    def epoch(generator_seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(data.train_batches(16, torch.Generator().manual_seed(generator_seed), max_batches=3))

    batches = epoch(0)
    assert 0 < len(batches) <= 3
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (channels, height, width)
        assert y.dtype == torch.int64 and len(y) == len(x)
        labelled = y[y != data.ignore_index] if data.task == "segmentation" else y
        assert ((0 <= labelled) & (labelled < data.num_classes)).all()
        if data.task == "segmentation":
            assert y.shape[1:] == (height, width)
    again = epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    if data.sizes["train"] > 16:
        assert not torch.equal(batches[0][1], epoch(1)[0][1]) or not torch.equal(batches[0][0], epoch(1)[0][0])
    seen = sum(len(y) for _, y in data.eval_batches("val", 7))
    assert seen == data.sizes["val"]
    x, _ = data.tensors("train")
    if isinstance(data.source, MemorySource):
        # Normalised by the training split's own statistics.
        assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert data.sample_input().shape == (1, channels, height, width)
    whole = data.whole_training_set()
    if data.has_test:
        assert whole.sizes["train"] == data.sizes["train"] + data.sizes["val"]
        assert whole.sizes["val"] == data.sizes["test"]
    else:
        assert whole is data
    first, second = data.halves(0.5)
    assert first.sizes["train"] + second.sizes["train"] == data.sizes["train"] + data.sizes["val"]

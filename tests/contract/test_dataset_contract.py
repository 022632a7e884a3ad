"""The contract every dataset keeps (workers/datasets/base.py), run on each registered one, built
in or plugged in, on tiny data written here in its layout (tests/datafiles.py): the task it
declares, splits that are disjoint and drawn by the seed, batches of the declared shape that follow
the caller's generator whether they come from memory or disk, every evaluation sample once, the
final training's and one-shot searches' views, normalisation by the training split, plain-data
descriptions, a reference that pickles (a plan carries it to every worker), and bad options named
by field. The checks are tests/contracts.py's, which a plug-in's own tests run too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datafiles
import pytest
from contracts import check_dataset

from raynas.workers.datasets import Dataset, dataset_names, get_dataset

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

"""Segmentation data and training: the composed digits set, mean IoU, the ignore label, training
and retraining a decoded Auto-DeepLab network (the folder layouts: tests/unit/test_datasets.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.search_spaces import get_space
from raynas.search_spaces.autodeeplab import AUTODEEPLAB
from raynas.search_spaces.types import AutoDeepLabArch
from raynas.workers.datasets import load_dataset
from raynas.workers.datasets.images import IGNORE_INDEX, MeanIoU, mean_iou
from raynas.workers.datasets.segmentation import compose, paint
from raynas.workers.evaluation import get_evaluator
from raynas.workers.evaluation.train import TrainEvaluator
from raynas.workers.export import export
from raynas.workers.retrain import recipe, retrain
from raynas.workers.training import TrainConfig, TrainingRun


@pytest.fixture(scope="module")
def digits_seg():
    return load_dataset("digits-seg", max_train=64)


def test_composed_set_is_real_deterministic_and_labelled(digits_seg):
    again = load_dataset("digits-seg", max_train=64)
    assert digits_seg.task == "segmentation"
    x_test, y_test = digits_seg.tensors("test")
    x_train, y_train = digits_seg.tensors("train")
    assert torch.equal(x_test, again.tensors("test")[0]) and torch.equal(y_train, again.tensors("train")[1])
    other_split = load_dataset("digits-seg", seed=1, max_train=64)
    assert not torch.equal(other_split.tensors("train")[1], y_train)
    assert torch.equal(other_split.tensors("test")[1], y_test)  # the test canvases do not depend on the seed
    assert x_train.shape[1:] == (1, 32, 32) and y_train.shape[1:] == (32, 32)
    labels = set(y_test.unique().tolist())
    assert labels == set(range(11)) | {IGNORE_INDEX}
    assert digits_seg.num_classes == 11


def test_masks_are_the_grown_strokes_with_an_ignored_band():
    """A stroke (strong ink) and the digit pixels next to it get the digit's class, the ring
    around that the ignore label, the rest (faint ink too) stays background."""
    image = np.zeros((8, 8), dtype=np.float32)
    image[3, 3], image[0, 7] = 16, 3
    canvas, mask = np.zeros((32, 32), dtype=np.float32), np.zeros((32, 32), dtype=np.int64)
    paint(canvas, mask, image, 7, top=4, left=8)
    assert canvas[4 + 6, 8 + 6] == 16 and canvas[4, 8 + 14] == 3 and canvas.sum() == 4 * (16 + 3)
    body = np.zeros((32, 32), dtype=bool)
    body[4 + 4:4 + 10, 8 + 4:8 + 10] = True  # digit pixels 2..4, scaled x2
    band = np.zeros((32, 32), dtype=bool)
    band[4 + 2:4 + 12, 8 + 2:8 + 12] = True
    band &= ~body
    assert (mask[body] == 8).all() and (mask[band] == IGNORE_INDEX).all() and (mask[~body & ~band] == 0).all()
    # A digit placed later covers an earlier one.
    paint(canvas, mask, image, 2, top=4, left=8)
    assert (mask[body] == 3).all()


def test_composition_is_seeded():
    images = np.random.default_rng(0).integers(0, 17, (5, 8, 8)).astype(np.float32)
    first = compose(images, np.arange(5), 4, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(first, compose(images, np.arange(5), 4, np.random.default_rng(1))))


def test_mean_iou_by_hand():
    confusion = torch.tensor([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    # class 0: 3 / (4 + 4 - 3) = 0.6; class 1: 2 / (3 + 3 - 2) = 0.5; class 2 absent from both.
    assert mean_iou(confusion) == pytest.approx(0.55)
    meter = MeanIoU(3)
    y = torch.tensor([[[0, 0, 1, IGNORE_INDEX]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 2]]]), 3).permute(0, 3, 1, 2).float()
    meter.add(logits, y)
    # The ignored pixel predicted as class 2 does not count: class 0 IoU 1/2, class 1 IoU 1/2.
    assert meter.value() == pytest.approx(0.5)


def test_loss_leaves_ignored_pixels_out(digits_seg):
    logits = torch.randn(2, 11, 4, 4, requires_grad=True)
    y = torch.full((2, 4, 4), IGNORE_INDEX)
    y[0, 0, 0] = 3
    digits_seg.loss(logits, y).backward()
    grad = logits.grad.clone()
    assert grad[0, :, 0, 0].abs().sum() > 0
    grad[0, :, 0, 0] = 0
    assert not grad.any()


def test_train_evaluator_scores_segmentation_by_miou(digits_seg):
    space = get_space("autodeeplab", layers=2)
    evaluator = TrainEvaluator(space, digits_seg, TrainConfig(epochs=1, batch_size=16, channels=2,
                                                              max_train_batches_per_epoch=2, num_threads=1))
    reports = []
    arch = space.sample(np.random.default_rng(0))
    result = evaluator.evaluate(arch, seed=0, report=reports.append)
    assert result.ok and 0 <= result.reward <= 1
    assert reports[0]["epoch"] == 1 and reports[0]["val_miou"] == result.reward
    assert result.metrics["val_miou_best"] == result.reward


def test_spaces_and_datasets_of_other_kinds_are_refused(digits_seg):
    with pytest.raises(ConfigError, match="^dataset.*need segmentation data.*digits-seg"):
        get_evaluator("train", get_space("autodeeplab"), load_dataset("digits"))
    with pytest.raises(ConfigError, match="^dataset.*need classification data"):
        TrainEvaluator(get_space("nb201"), digits_seg)
    with pytest.raises(ConfigError, match="^data_path"):
        load_dataset("digits-seg", path="/tmp")


def test_poly_schedule():
    run = TrainingRun(torch.nn.Linear(1, 1), None, TrainConfig(epochs=2, lr=0.1, lr_schedule="poly"),
                      torch.device("cpu"), torch.Generator(), unit="images")
    lrs = run._schedule(5)
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.1 * 0.5 ** 0.9)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ConfigError, match="^lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_nas_train_and_export_a_decoded_network(digits_seg, tmp_path):
    arch = str(AutoDeepLabArch(AUTODEEPLAB.cell, (0, 1)))
    config = recipe("autodeeplab", "digits-seg", epochs=1, channels=2, max_train_batches_per_epoch=2, num_threads=1)
    assert config.lr_schedule == "poly"
    result = retrain("autodeeplab", arch, digits_seg, config, tmp_path / "train", log=lambda _: None)
    assert result["state"] == "done" and result["metric"] == "miou" and 0 <= result["test_acc"] <= 1
    info = export("autodeeplab", arch, "torch-export", tmp_path / "model.pt2", checkpoint=tmp_path / "train")
    assert info["weights"].startswith("trained") and info["outputs"][0]["shape"] == ["batch", 11, 32, 32]
    assert info["preprocessing"]["ignore_index"] == IGNORE_INDEX
    model = torch.export.load(tmp_path / "model.pt2").module()
    # Raw canvases [N, H, W, 1] (digits' scale, 0..16) in; per-pixel logits out.
    x = digits_seg.tensors("test")[0][:3]
    raw = x * torch.tensor(digits_seg.std)[:, None, None] + torch.tensor(digits_seg.mean)[:, None, None]
    assert model(raw.permute(0, 2, 3, 1)).shape == (3, 11, 32, 32)
    with pytest.raises(ConfigError, match="^dataset"):
        retrain("autodeeplab", arch, load_dataset("digits"), config, tmp_path / "other", log=lambda _: None)

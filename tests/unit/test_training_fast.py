"""The training loop's speed switches (autocast, channels-last, pinned copies, cuDNN's autotuner):
how they resolve on each device, what an evaluation records, and the fp16 gradient scaler's logic,
run on the CPU through a stand-in that lets the CPU take CUDA's mixed-precision branch."""

import dataclasses
import functools
import io
import math

import numpy as np
import pytest
import torch

from raynas.common import ConfigError
from raynas.common.options import parse_options
from raynas.common.threads import torch_threads
from raynas.search_spaces import get_space
from raynas.workers import training
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation import get_evaluator
from raynas.workers.evaluation import train as train_module
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.training import Speed, TrainConfig, TrainingRun, cutout, resolve_speed

RESNET = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
TINY = dict(channels=4, layers=1, batch_size=32, num_threads=1)
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@functools.cache
def digits():
    """The digits cut small: fp16 is emulated on a CPU, slowly."""
    data = load_dataset("digits")
    return dataclasses.replace(data, splits={"train": data.splits["train"][:256], "val": data.splits["val"][:64]})


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on two busy cores run these small networks about ten times slower than one.
    with torch_threads(1):
        yield


@pytest.fixture
def cpu_as_gpu(monkeypatch):
    """The CPU takes the mixed-precision branch, as a GPU without native bf16 (fp16 and its scaler)."""
    monkeypatch.setattr(training, "MIXED_PRECISION_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(training, "bf16_native", lambda device: False)


# -- how the switches resolve ------------------------------------------------------------------


@pytest.mark.parametrize("image", [True, False])
def test_every_switch_is_off_on_the_cpu(image):
    assert resolve_speed(TrainConfig(), CPU, image=image) == Speed()
    assert Speed().metrics() == {"precision": "fp32", "channels_last": False, "pin_memory": False,
                                 "cudnn_benchmark": False}


@pytest.mark.parametrize("options, image, bf16, expected", [
    ({}, True, True, Speed("bf16", True, True, True)),
    # A GPU without native bf16 (before Ampere) falls back to fp16, which needs the scaler.
    ({}, True, False, Speed("fp16", True, True, True)),
    ({"autocast_dtype": "fp16"}, True, True, Speed("fp16", True, True, True)),
    ({"autocast": False}, True, True, Speed("fp32", True, True, True)),
    ({"autocast": False, "autocast_dtype": "bf16"}, True, False, Speed("fp32", True, True, True)),
    ({"channels_last": False}, True, True, Speed("bf16", False, True, True)),
    ({"pin_memory": False}, True, True, Speed("bf16", True, False, True)),
    ({"cudnn_benchmark": False}, True, True, Speed("bf16", True, True, False)),
    # Language models: no convolutions to lay out channels-last.
    ({}, False, True, Speed("bf16", False, True, True)),
    ({}, False, False, Speed("fp16", False, True, True)),
])
def test_switches_on_cuda_resolve_as_asked(options, image, bf16, expected):
    assert resolve_speed(TrainConfig(**options), CUDA, image=image, bf16=bf16) == expected


def test_bf16_on_a_gpu_without_it_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as exc:
        resolve_speed(TrainConfig(autocast_dtype="bf16"), CUDA, image=True, bf16=False)
    assert exc.value.field == "autocast_dtype" and "fp16" in str(exc.value)


def test_an_unknown_autocast_type_names_the_option():
    with pytest.raises(ConfigError) as exc:
        parse_options(TrainConfig, {"autocast_dtype": "fp8"}, "evaluator_options", "train")
    assert exc.value.field == "evaluator_options.autocast_dtype"


# -- what an evaluation records ----------------------------------------------------------------


def test_a_cpu_evaluation_trains_in_fp32_and_says_so():
    evaluator = get_evaluator("train", "nb201", digits(), epochs=1, max_train_batches_per_epoch=3, cutout=4, **TINY)
    result = evaluator.evaluate(RESNET, seed=0)
    assert result.ok, result.reason
    m = result.metrics
    assert (m["precision"], m["channels_last"], m["pin_memory"], m["cudnn_benchmark"]) == ("fp32", False, False, False)
    assert "loss_scale" not in m


def test_the_fp16_path_through_an_evaluation(monkeypatch, cpu_as_gpu):
    built, steps = [], []
    build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda *a: built.append(build(*a)) or built[-1])
    step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, *a: steps.append(self.get_scale()) or step(self, *a))
    evaluator = get_evaluator("train", "nb201", digits(), epochs=1, max_train_batches_per_epoch=3, **TINY)
    result = evaluator.evaluate(RESNET, seed=0)
    assert result.ok, result.reason
    m = result.metrics
    assert (m["precision"], m["channels_last"], m["pin_memory"], m["cudnn_benchmark"]) == ("fp16", True, False, False)
    assert len(steps) == 3 and m["loss_scale"] > 0
    convs = [p for p in built[-1].parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


# -- the gradient scaler -----------------------------------------------------------------------


def _run(config: TrainConfig, seed: int = 0) -> TrainingRun:
    torch.manual_seed(seed)
    net = NetConfig(in_channels=1, num_classes=10, image_size=8, channels=4, layers=1)
    model = build_model("nb201", get_space("nb201").parse(RESNET), net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return TrainingRun(model, optimizer, config.resolved("classification"), CPU,
                       torch.Generator().manual_seed(seed), unit="images")


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_backs_off(cpu_as_gpu):
    run = _run(TrainConfig(grad_clip=0))
    assert run.speed.precision == "fp16" and run.scaler.is_enabled()
    x, y = next(digits().train_batches(8, torch.Generator().manual_seed(0)))
    before = [p.detach().clone() for p in run.params]
    scale = run.scaler.get_scale()
    with run.autocast():
        loss = torch.nn.functional.cross_entropy(run.model(run._images(x)), y)
    run._step(loss * float("inf"), lr=0.1)
    assert all(torch.equal(p, b) for p, b in zip(run.params, before))
    assert run.scaler.get_scale() == scale * 0.5
    with run.autocast():
        loss = torch.nn.functional.cross_entropy(run.model(run._images(x)), y)
    run._step(loss, lr=0.1)
    assert any(not torch.equal(p, b) for p, b in zip(run.params, before))
    assert run.scaler.state_dict()["_growth_tracker"] == 1


def test_clipping_bounds_the_unscaled_gradients(cpu_as_gpu):
    run = _run(TrainConfig(grad_clip=1e-3))
    x, y = next(digits().train_batches(8, torch.Generator().manual_seed(0)))
    with run.autocast():
        loss = torch.nn.functional.cross_entropy(run.model(run._images(x)), y)
    run._step(loss, lr=0.1)
    grads = torch.cat([p.grad.flatten() for p in run.params if p.grad is not None])
    # Clipped before unscaling, the gradients would end 2**16 times below the bound.
    assert float(grads.norm()) == pytest.approx(1e-3, rel=1e-3)


def _saved(run: TrainingRun) -> dict:
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_a_resumed_fp16_run_keeps_the_scale_and_ends_as_a_straight_one(cpu_as_gpu):
    config = TrainConfig(epochs=2, max_train_batches_per_epoch=3, batch_size=32, channels=4, layers=1)
    straight = _run(config)
    assert straight.fit_images(digits()) is None

    first = _run(config)
    assert first.fit_images(digits(), stop_epoch=1) is None
    state = _saved(first)
    assert state["scaler"]["_growth_tracker"] == 3  # three steps, none skipped
    resumed = _run(config, seed=1)
    resumed.load_state_dict(state)
    assert resumed.scaler.state_dict() == state["scaler"]
    assert resumed.fit_images(digits(), start_epoch=1) is None

    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    assert resumed.train_loss_curve == straight.train_loss_curve and resumed.val_curve == straight.val_curve
    for a, b in zip(resumed.params, straight.params):
        assert torch.equal(a, b)


def test_a_run_saved_without_a_scaler_resumes_in_fp16_with_a_fresh_one(monkeypatch):
    config = TrainConfig(epochs=2, max_train_batches_per_epoch=2, batch_size=32, channels=4, layers=1)
    fp32 = _run(config)
    fp32.fit_images(digits(), stop_epoch=1)
    state = _saved(fp32)
    assert state["scaler"] == {}
    monkeypatch.setattr(training, "MIXED_PRECISION_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(training, "bf16_native", lambda device: False)
    fp16 = _run(config)
    fp16.load_state_dict(state)
    assert fp16.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()
    assert fp16.fit_images(digits(), start_epoch=1) is None


# -- channels-last, pinned copies, cuDNN's autotuner --------------------------------------------


@pytest.mark.parametrize("space, options, net", [
    ("nb201", {}, {"channels": 4, "layers": 1}),
    ("darts", {}, {"channels": 4, "layers": 3, "auxiliary": True, "drop_path": 0.2}),
    ("nasnet", {}, {"channels": 4, "layers": 3}),
    ("macro", {"num_layers": 2}, {}),
])
def test_every_image_network_trains_channels_last(space, options, net):
    s = get_space(space, **options)
    config = NetConfig(in_channels=3, num_classes=10, image_size=32, **net)
    arch = s.sample(np.random.default_rng(0))
    torch.manual_seed(0)
    reference = build_model(space, arch, config)
    torch.manual_seed(0)
    model = build_model(space, arch, config).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)  # the same drop-path draws in both
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.manual_seed(1)
    expected = reference(x)
    out, expected = (o[0] if isinstance(o, tuple) else o for o in (out, expected))
    assert torch.allclose(out, expected, atol=1e-4)
    out.sum().backward()


def test_segmentation_networks_train_channels_last():
    arch = get_space("autodeeplab").sample(np.random.default_rng(0))
    config = NetConfig(in_channels=3, num_classes=4, image_size=16, channels=2)
    torch.manual_seed(0)
    reference = build_model("autodeeplab", arch, config)
    torch.manual_seed(0)
    model = build_model("autodeeplab", arch, config).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16)
    out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, reference(x), atol=1e-4)
    out.sum().backward()


def test_pinned_cutout_draws_the_same_squares(monkeypatch):
    x = torch.ones(4, 1, 8, 8)
    plain = cutout(x, 4, torch.Generator().manual_seed(0))
    pinned = []
    # A CPU-only build cannot pin; the stand-in records that the centres would be.
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self) or self)
    assert torch.equal(cutout(x, 4, torch.Generator().manual_seed(0), pin=True), plain)
    assert len(pinned) == 2


def test_the_autotuner_flag_holds_for_the_run_only():
    run = _run(TrainConfig(epochs=1, max_train_batches_per_epoch=1, batch_size=32))
    run.speed = Speed(cudnn_benchmark=True)
    seen = []
    before = torch.backends.cudnn.benchmark
    assert run.fit_images(digits(), on_epoch=lambda epoch: seen.append(torch.backends.cudnn.benchmark)) is None
    assert seen == [True] and torch.backends.cudnn.benchmark == before


# -- language models ---------------------------------------------------------------------------


def test_a_language_model_trains_in_fp16_and_scores_perplexity_in_fp32(monkeypatch, cpu_as_gpu, tiny_ptb):
    data = load_dataset("ptb", tiny_ptb)
    # NT-ASGD replaces the optimizer after the first epoch: the scaler steps whichever is current.
    config = TrainConfig(epochs=4, batch_size=4, bptt=10, channels=16, asgd_nonmono=1,
                         max_train_batches_per_epoch=4).resolved("language_model")
    torch.manual_seed(0)
    model = build_model("rnn", get_space("rnn").parse("DARTS_V2"), NetConfig(vocab_size=data.vocab_size, channels=16))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run = TrainingRun(model, optimizer, config, CPU, torch.Generator().manual_seed(0), unit="tokens")
    train_autocast = run.autocast
    casts = []
    run.autocast = lambda: casts.append(1) or train_autocast()
    monkeypatch.setattr(run.scaler, "step", lambda opt, step=run.scaler.step: casts.append("step") or step(opt))
    failure = run.fit_text(data, stop_epoch=1)
    assert failure is None and casts.count(1) == casts.count("step") == 4
    m = run.metrics()
    assert (m["precision"], m["channels_last"]) == ("fp16", False) and m["loss_scale"] > 0
    casts.clear()
    assert math.isfinite(run.perplexity(data, "val")) and casts == []
    run.val_curve = [1.0]  # worse from here on: the third epoch is the first to see an epoch before the last one
    assert run.fit_text(data, start_epoch=1, stop_epoch=4) is None
    assert isinstance(run.optimizer, torch.optim.ASGD) and run.averaged_from == 3

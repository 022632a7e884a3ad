"""Write an architecture (`json`) or a deployable model (`torch-export`, `onnx`): `nas export`.

An image model holds its training data's preprocessing (`RawImages`), so that images go in as a
decoder gives them and the accuracy `nas train` reported comes out:

    images  [N, H, W, C] (C = 3 for RGB, 1 for grey; what PIL and numpy decode), in the training
            data's raw dtype and scale: uint8 0..255 for image files and the built-in image sets,
            float32 0..16 for digits; at the size the network trained at (preprocessing.input's
            height and width; its `resize` says how the training images were brought to it); any N
    logits  [N, classes] (segmentation: [N, classes, H, W]), named by preprocessing.class_names

Beside every model file, PATH.json describes it: space and architecture, parameters and FLOPs,
where the weights came from, the inputs and outputs, and the training data's whole preprocessing
(mean, std, class names, raw dtype and size; a language model's vocabulary); an ONNX file carries
the same in its metadata_props (one key each, values other than text as JSON). The json format
writes that description alone: it holds no weights, and says so.

- torch-export: `torch.export.load(PATH).module()`, any batch size. A language model keeps its
  own signature, `(tokens [35, B], hidden) -> (logits [35, B, vocab], hidden)`, the hidden state
  in and out (a tensor [B, H], or (h, c) for the tree cell) so that a caller carries it across
  windows; a window of 35 tokens (the time loop is unrolled when exporting);
- onnx: `torch.onnx.export`, image models only, input "images" and output "logits" with a dynamic
  batch axis (needs onnx and onnxscript: pip install 'raynas[onnx]').

Without a checkpoint the weights are freshly initialised and no data is known: the model takes
float32 images in the same layout and feeds them to the network as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from raynas.common import ConfigError
from raynas.search_spaces import get_space
from raynas.workers.datasets.images import normalise
from raynas.workers.nets import LANGUAGE_SPACES, NetConfig, build_model, space_task
from raynas.workers.profile import count_flops, count_params

FORMATS = ("json", "torch-export", "onnx")
#: Tokens per window of an exported language model.
WINDOW = 35


class RawImages(torch.nn.Module):
    """An image network behind its data's normalisation: raw images [N, H, W, C] in, logits out."""

    def __init__(self, network: torch.nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The training's formula on contiguous NCHW, as training fed it: a channels-last view takes
        # other convolution kernels, which round differently (1e-7), enough to flip a near tie.
        return self.network(normalise(images.permute(0, 3, 1, 2).contiguous(), self.mean, self.std))


def checkpoint_file(checkpoint: str | Path) -> Path:
    """The checkpoint.pt of a `nas train` output (its directory, or the file itself)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError("checkpoint", f"no nas train checkpoint at {checkpoint}")
    return path


def load_trained(checkpoint: str | Path) -> dict[str, Any]:
    """A `nas train` checkpoint (its file, or the training's output directory)."""
    return torch.load(checkpoint_file(checkpoint), weights_only=False)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("format", "onnx export needs the exporter: pip install 'raynas[onnx]' (onnx, onnxscript)",
                          ("json", "torch-export")) from None


def _batched(shape: Sequence[int]) -> list[int | str]:
    return ["batch", *shape[1:]]


def _image_model(space: str, network: torch.nn.Module, net: NetConfig, preprocessing: dict[str, Any] | None
                 ) -> tuple[RawImages, tuple[torch.Tensor], tuple[Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The network behind its preprocessing, a sample input, its dynamic shapes, and the inputs and outputs."""
    if preprocessing is None:
        channels, height, width, dtype = net.in_channels, net.image_size, net.image_size, "float32"
        mean, std = [0.0] * channels, [1.0] * channels
    else:
        raw = preprocessing["input"]
        channels, height, width, dtype = raw["channels"], raw["height"], raw["width"], raw["dtype"]
        mean, std = preprocessing["mean"], preprocessing["std"]
    # Batch 2: an example of 1 would let the exporters take the batch size for a constant.
    sample = torch.zeros(2, height, width, channels, dtype=getattr(torch, dtype))
    logits = [net.num_classes, height, width] if space_task(space) == "segmentation" else [net.num_classes]
    return (RawImages(network, mean, std).eval(), (sample,), ({0: torch.export.Dim("batch")},),
            [{"name": "images", "shape": _batched(sample.shape), "dtype": dtype, "layout": "NHWC"}],
            [{"name": "logits", "shape": ["batch", *logits]}])


def _language_model(network: torch.nn.Module, net: NetConfig
                    ) -> tuple[tuple[Any, ...], tuple[Any, ...], list[dict[str, Any]], list[dict[str, Any]]]:
    """A sample (tokens, hidden), its dynamic shapes, and the inputs and outputs."""
    tokens, hidden = torch.zeros(WINDOW, 2, dtype=torch.long), network.init_hidden(2)
    batch = torch.export.Dim.AUTO
    if isinstance(hidden, tuple):
        hidden_dims, hidden_shape = tuple({0: batch} for _ in hidden), [_batched(h.shape) for h in hidden]
    else:
        hidden_dims, hidden_shape = {0: batch}, _batched(hidden.shape)
    state = {"name": "hidden", "shape": hidden_shape}
    return ((tokens, hidden), ({1: batch}, hidden_dims),
            [{"name": "tokens", "shape": [WINDOW, "batch"], "dtype": "int64"}, state],
            [{"name": "logits", "shape": [WINDOW, "batch", net.vocab_size]}, state])


def _weights(fmt: str, checkpoint: Path | None, trained: dict[str, Any] | None) -> str:
    if fmt == "json":
        held = f"the trained ones are in {checkpoint}" if trained else "no --checkpoint was given"
        return f"none in this file, which describes the architecture ({held})"
    if trained:
        return f"trained ({trained['epoch'] + 1} epochs; {checkpoint})"
    return "initialised (no --checkpoint: train it with nas train)"


def export(space: str, arch: str, fmt: str, out: str | Path, *, checkpoint: str | Path | None = None,
           net: NetConfig | None = None) -> dict[str, Any]:
    """Write `arch` as `fmt` to `out`, with a `nas train` checkpoint's weights and preprocessing
    (else initialised weights and the `net` config), and its description beside a model file.
    Returns the description with `out` (and `description`, the sidecar's path)."""
    if fmt not in FORMATS:
        raise ConfigError("format", f"unknown format {fmt!r}", FORMATS)
    language = space in LANGUAGE_SPACES
    if fmt == "onnx":
        if language:
            raise ConfigError("format", f"the {space} language model exports as json or torch-export",
                              ("json", "torch-export"))
        _require_onnx()
    # Absolute: the description travels with the model, away from where this ran.
    path = checkpoint_file(checkpoint).absolute() if checkpoint else None
    trained = load_trained(path) if path else None
    if trained:
        if (trained["space"], trained["arch"]) != (space, arch):
            raise ConfigError("checkpoint", f"it holds {trained['space']} {trained['arch']}, not {space} {arch}")
        if "preprocessing" not in trained:
            raise ConfigError("checkpoint", f"{path} does not record its data's preprocessing, which the export "
                              "must hold (it predates that): train it again with nas train")
        net = NetConfig(**trained["net"])
    net = net or NetConfig()
    value = get_space(space).validate(get_space(space).parse(arch))
    network = build_model(space, value, net).eval()
    if trained:
        network.load_state_dict(trained["run"]["model"])
    preprocessing = trained["preprocessing"] if trained else None
    if language:
        model = network
        sample, dynamic, inputs, outputs = _language_model(network, net)
        flops = count_flops(network, sample[0][:, :1])
    else:
        model, sample, dynamic, inputs, outputs = _image_model(space, network, net, preprocessing)
        flops = count_flops(network, sample[0][:1].permute(0, 3, 1, 2).float())
    info = {"space": space, "arch": str(value), "format": fmt, "params": count_params(network), "flops": flops,
            "net_config": dict(vars(net)), "weights": _weights(fmt, path, trained), "inputs": inputs,
            "outputs": outputs, "preprocessing": preprocessing}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        out.write_text(json.dumps(info, indent=2) + "\n")
        return {**info, "out": str(out)}
    with torch.no_grad():
        if fmt == "torch-export":
            torch.export.save(torch.export.export(model, sample, dynamic_shapes=dynamic), out)
        else:
            program = torch.onnx.export(model, sample, dynamo=True, dynamic_shapes=dynamic, input_names=["images"],
                                        output_names=["logits"], verbose=False)
            program.model.metadata_props.update({k: v if isinstance(v, str) else json.dumps(v)
                                                 for k, v in info.items()})
            program.save(str(out))
    description = Path(f"{out}.json")
    description.write_text(json.dumps(info, indent=2) + "\n")
    return {**info, "out": str(out), "description": str(description)}

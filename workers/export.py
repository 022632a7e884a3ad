"""Write an architecture and a loadable model (`nas export`).

- json: the architecture (space, canonical string), its size and the network config;
- torch-export: `torch.export` of the evaluation network in eval mode, loadable with
  `torch.export.load(PATH).module()`, with the weights of a `nas train` checkpoint when one
  is given (freshly initialised otherwise, and the output says so). A language model exports
  as `(tokens [35, B], hidden) -> (logits [35, B, vocab], hidden)`, the hidden state in and out
  (a tensor [B, H], or (h, c) for the tree cell) so that a caller carries it across windows;
  any batch size, a window of 35 tokens (the time loop is unrolled when exporting);
- onnx: the same network through `torch.onnx.export` (needs the onnx and onnxscript packages).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from raynas.common import ConfigError
from raynas.search_spaces import get_space
from raynas.workers.nets import LANGUAGE_SPACES, NetConfig, build_model
from raynas.workers.profile import count_flops, count_params

FORMATS = ("json", "torch-export", "onnx")


def load_trained(checkpoint: str | Path) -> dict[str, Any]:
    """A `nas train` checkpoint (its file, or the training's output directory)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError("checkpoint", f"no nas train checkpoint at {checkpoint}")
    return torch.load(path, weights_only=False)


def export(space: str, arch: str, fmt: str, out: str | Path, *, checkpoint: str | Path | None = None,
           net: NetConfig | None = None) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise ConfigError("format", f"unknown format {fmt!r}", FORMATS)
    trained = load_trained(checkpoint) if checkpoint else None
    if trained:
        if (trained["space"], trained["arch"]) != (space, arch):
            raise ConfigError("checkpoint", f"it holds {trained['space']} {trained['arch']}, not {space} {arch}")
        net = NetConfig(**trained["net"])
    net = net or NetConfig()
    value = get_space(space).validate(get_space(space).parse(arch))
    model = build_model(space, value, net).eval()
    if trained:
        model.load_state_dict(trained["run"]["model"])
    sample = (torch.zeros(35, 1, dtype=torch.long) if space in LANGUAGE_SPACES
              else torch.zeros(1, net.in_channels, net.image_size, net.image_size))
    info = {"space": space, "arch": str(value), "format": fmt, "params": count_params(model),
            "flops": count_flops(model, sample), "net_config": {k: v for k, v in vars(net).items()},
            "weights": "trained" if trained else "initialised (no --checkpoint: train it with nas train)",
            "input_shape": list(sample.shape)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        out.write_text(json.dumps(info, indent=2) + "\n")
    elif fmt == "torch-export":
        with torch.no_grad():
            # Any batch size at load time; the image shape (the token window) stays as exported.
            if space in LANGUAGE_SPACES:
                tokens = sample.expand(-1, 2).clone()
                hidden = model.init_hidden(2)
                batch = torch.export.Dim.AUTO
                hidden_dims = ({0: batch}, {0: batch}) if isinstance(hidden, tuple) else {0: batch}
                program = torch.export.export(model, (tokens, hidden), dynamic_shapes=({1: batch}, hidden_dims))
            else:
                program = torch.export.export(model, (sample.expand(2, *sample.shape[1:]).clone(),),
                                              dynamic_shapes=({0: torch.export.Dim.AUTO},))
            torch.export.save(program, out)
    elif space in LANGUAGE_SPACES:
        raise ConfigError("format", f"the {space} language model exports as json or torch-export",
                          ("json", "torch-export"))
    else:
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise ConfigError("format", "onnx export needs the exporter: pip install onnx onnxscript",
                              ("json", "torch-export")) from None
        torch.onnx.export(model, (sample,), str(out), dynamo=True)
    return {**info, "out": str(out)}

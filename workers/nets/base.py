"""What every network builder shares: `NetConfig` and the registry of builders by space.

`build_model(space, arch, config)` (in this package's __init__) builds a child network.

Image models map images [B, C, H, W] to logits [B, num_classes]; built with
`auxiliary=True` and in training mode they return `(logits, aux_logits)`, and
their auxiliary head is the submodule `auxiliary_head` (left out of
`workers.profile.count_params`). Networks with drop-path expose
`drop_path_prob`, which the trainer may ramp per epoch. Segmentation models (SEGMENTATION_SPACES)
map images to per-pixel logits [B, num_classes, H, W].

Language models (space "rnn") map tokens [T, B] and a hidden state to logits
[T, B, vocab_size] (unnormalised: apply log_softmax or cross_entropy) and the
new hidden state; `model.init_hidden(batch_size)` gives the initial state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from torch import nn

from raynas.common import ConfigError, check_int, check_number

#: Spaces whose children are language models (tokens in, next-token scores out).
LANGUAGE_SPACES = ("rnn", "nasrnn")
#: Spaces whose networks label every pixel: logits [B, num_classes, H, W].
SEGMENTATION_SPACES = ("autodeeplab",)


def space_task(space_name: str) -> str:
    """The task the networks of a space serve (workers/datasets' TASKS)."""
    if space_name in LANGUAGE_SPACES:
        return "language_model"
    return "segmentation" if space_name in SEGMENTATION_SPACES else "classification"


@dataclass(frozen=True)
class NetConfig:
    """What a network needs besides its architecture. Validated on construction.

    `channels` and `layers` override the space's default width and depth
    (None: the builder's default). Fields a network cannot honour are refused
    by its builder with a ConfigError naming the field, rather than ignored.
    """

    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    #: Width: NB201 and DARTS initial channels C; the language model's embedding/hidden size.
    channels: int | None = None
    #: Depth: NB201 cells per stage N; DARTS cells in total; a language model's stacked cells (1 by default).
    layers: int | None = None
    auxiliary: bool = False
    #: Initial drop-path probability (cell networks); the trainer may change `model.drop_path_prob`.
    drop_path: float = 0.0
    # Language models. The decoder shares the embedding's weights, so embed_size must equal
    # hidden_size. DARTS' PTB model is 850 wide with dropouts 0.75 / 0.25 / 0.75 / 0.2 / 0.1;
    # these defaults are for small children trained for a few epochs.
    vocab_size: int = 10000
    embed_size: int = 64
    hidden_size: int = 64
    #: On the cell's outputs, one mask per sequence (locked dropout).
    dropout: float = 0.25
    #: On h_{t-1} inside the cell, one mask per sequence (variational dropout).
    dropout_h: float = 0.1
    #: On x_t inside the cell, one mask per sequence.
    dropout_x: float = 0.25
    #: On the embeddings, one mask per sequence.
    dropout_i: float = 0.1
    #: Whole words: rows of the embedding matrix.
    dropout_e: float = 0.0

    def __post_init__(self):
        for name in ("in_channels", "num_classes", "image_size", "channels", "layers",
                     "vocab_size", "embed_size", "hidden_size"):
            check_int(name, getattr(self, name), optional=name in ("channels", "layers"))
        if type(self.auxiliary) is not bool:
            raise ConfigError("auxiliary", f"must be a bool, got {self.auxiliary!r}")
        for name in ("drop_path", "dropout", "dropout_h", "dropout_x", "dropout_i", "dropout_e"):
            check_number(name, getattr(self, name), 0, 1, high_open=True)

    def refuse(self, network: str, *names: str) -> None:
        """Raise a ConfigError for the first of `names` set away from its default:
        for fields that `network` has no use for."""
        defaults = {f.name: f.default for f in fields(self)}
        for name in names:
            if getattr(self, name) != defaults[name]:
                raise ConfigError(name, f"does not apply to the {network} network")


Builder = Callable[[object, "NetConfig"], nn.Module]

#: space name -> (architecture type the builder takes, builder)
BUILDERS: dict[str, tuple[type, Builder]] = {}


def register(space: str, arch_type: type) -> Callable[[Builder], Builder]:
    """Decorator: `builder(arch, config)` builds networks for `space`'s architectures."""

    def add(builder: Builder) -> Builder:
        if space in BUILDERS:
            raise ConfigError("space", f"two network builders registered for space {space!r}")
        BUILDERS[space] = (arch_type, builder)
        return builder

    return add


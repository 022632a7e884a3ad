"""Text corpora for language models: `text-folder` (your own train/valid/test .txt files) and
`ptb` (Mikolov's Penn Treebank files), read into token streams held in memory.

Words are split on white space, each line ends with `<eos>`, and ids follow first appearance in
the training text (as the usual PTB readers assign them). A word of the validation or test text
that training never saw becomes `<unk>` when the vocabulary has it, and is an error otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raynas.common import ConfigError
from raynas.workers.datasets import register_dataset
from raynas.workers.datasets.base import LANGUAGE_MODEL, Data, Dataset, TextOptions

EOS, UNK = "<eos>", "<unk>"


@dataclass(frozen=True, eq=False)
class TextData(Data):
    """Word-level corpus as 1-D int64 token streams; ids index `vocab`."""

    task = LANGUAGE_MODEL
    #: What validation measures, as reports name it (val_ppl).
    metric = "ppl"

    name: str
    vocab: tuple[str, ...]
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "vocab_size": self.vocab_size, "sizes": self.sizes}

    def preprocessing(self) -> dict[str, Any]:
        return {"task": self.task, "tokens": "words split on white space, <eos> after each line, unknown words "
                "as <unk>", "vocab": list(self.vocab)}

    def batchify(self, split: str, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The split's stream cut into `batch_size` parallel columns: shape [T, batch_size].
        The tail that does not fill a row is dropped, as in the usual PTB setup."""
        streams = {"train": self.train, "val": self.val, "test": self.test}
        if split not in streams:
            raise ConfigError("split", f"unknown split {split!r}", tuple(streams))
        tokens = streams[split]
        rows = len(tokens) // batch_size
        if rows < 2:
            raise ConfigError("batch_size", f"{batch_size} leaves fewer than 2 time steps of the "
                              f"{split} split ({len(tokens)} tokens)")
        return tokens[:rows * batch_size].view(batch_size, rows).t().contiguous().to(device)


@register_dataset
class TextFolder(Dataset):
    """Your own corpus: a folder with train.txt, valid.txt (or val.txt) and test.txt."""

    name = "text-folder"
    task = LANGUAGE_MODEL
    summary = "your own text corpus: a folder with train.txt, valid.txt and test.txt"
    layout = "a folder with train.txt, valid.txt (or val.txt) and test.txt, words separated by white space"
    Options = TextOptions
    #: Each split's file, the first name found.
    files: dict[str, tuple[str, ...]] = {"train": ("train.txt",), "val": ("valid.txt", "val.txt"),
                                         "test": ("test.txt",)}

    def load(self, seed: int = 0) -> TextData:
        folder = self.root()
        if not folder.is_dir():
            raise ConfigError("data_path", f"not found: folder {folder}; expected {self.layout}")
        words = {split: self._words(folder, names) for split, names in self.files.items()}
        ids = {w: i for i, w in enumerate(dict.fromkeys(words["train"]))}
        unknown = ids.get(UNK)
        streams = {}
        for split, tokens in words.items():
            try:
                streams[split] = torch.tensor([ids[w] if unknown is None else ids.get(w, unknown) for w in tokens],
                                              dtype=torch.int64)
            except KeyError as exc:
                raise ConfigError("data_path", f"{folder}: the {split} word {exc.args[0]!r} is not in the training "
                                  f"vocabulary and there is no {UNK} token") from None
        if self.options.max_train is not None:
            streams["train"] = streams["train"][:self.options.max_train]
        return TextData(name=self.name, vocab=tuple(ids), **streams)

    def _words(self, folder: Path, names: tuple[str, ...]) -> list[str]:
        file = next((folder / n for n in names if (folder / n).is_file()), None)
        if file is None:
            raise ConfigError("data_path", f"not found: {folder / names[0]}; expected {self.layout}")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("data_path", f"cannot read {file}: {exc}; expected {self.layout}") from None
        return [w for line in text.splitlines() for w in (*line.split(), EOS)]


@register_dataset
class PTB(TextFolder):
    """Penn Treebank as Mikolov's preprocessed files (10k words), what Zoph & Le and DARTS search on."""

    name = "ptb"
    summary = "Penn Treebank (--data: the folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt)"
    layout = "a folder with ptb.train.txt, ptb.valid.txt and ptb.test.txt"
    files = {"train": ("ptb.train.txt",), "val": ("ptb.valid.txt",), "test": ("ptb.test.txt",)}

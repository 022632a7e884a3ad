"""Zoph & Le's controller (NAS with RL, 2017): an autoregressive LSTM that
speaks any search space's decisions.

One step per decision. A categorical decision is a softmax head on the LSTM
output, and the embedding of the chosen value is the next input. A subset
decision (the macro space's skip connections) is Zoph & Le's anchor point:
one Bernoulli per candidate layer j, P(j feeds the current layer i) =
sigmoid(v^T tanh(W_prev h_j + W_curr h_i)), where h_j is layer j's anchor.

Heads, embeddings and anchor weights exist once per decision *group*, so the
parameters depend on the space's groups, not on its depth: the macro space's
depth schedule adds decisions without adding parameters.

Anchors. Every layer ends with a subset step (the first layer's has no
candidates), whose input is the embedding of the layer's last choice: its
output is the layer's anchor, so an anchor knows the layer it stands for, and
the layer's own connections are chosen against the anchors of the layers before
it, as in Zoph & Le's attention and ENAS's macro controller. The k-th subset
decision may therefore name candidates 0..k-1.

Input after a subset decision: the chosen anchors' sum divided by (1 + their
count), ENAS's choice; it is the zero vector for "no connection". After a step
with nothing to choose the next input is the start embedding (ENAS's g_emb).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raynas.common import ConfigError, check_int, check_number
from raynas.common.threads import torch_threads
from raynas.search_spaces import Categorical, Decision, Subset


def _choices(decision: Decision) -> tuple | None:
    return decision.choices if isinstance(decision, Categorical) else None


def _key(group: str) -> str:
    # ModuleDict keys may not contain '.', which cell spaces use in group names.
    return group.replace(".", "/")


class _ChoiceHead(nn.Module):
    def __init__(self, hidden_size: int, num_choices: int):
        super().__init__()
        self.logits = nn.Linear(hidden_size, num_choices)
        self.embedding = nn.Embedding(num_choices, hidden_size)


class _AnchorHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.w_prev = nn.Linear(hidden_size, hidden_size, bias=False)
        self.w_curr = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v = nn.Linear(hidden_size, 1, bias=False)

    def logits(self, h: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """[n, c] connection logits of the current output `h` [n, H] to `anchors` [c, n, H]."""
        return self.v(torch.tanh(self.w_prev(anchors) + self.w_curr(h))).squeeze(-1).T


class LSTMPolicy(nn.Module):
    """The controller over `decisions`; sample with `sample`, score with `log_prob`.

    `decisions` fixes the parameter set (one head per group); `set_decisions`
    later switches to another list over the same groups (a deeper macro space).
    `temperature` divides logits and `tanh_constant` squashes them to
    c * tanh(logits), ENAS's ways to keep the controller exploring; both off
    by default as in Zoph & Le. Weights are drawn from `generator`
    (U(-init_range, init_range) for all, Zoph & Le's 0.08), never the global RNG.
    """

    def __init__(self, decisions: Sequence[Decision], hidden_size: int = 35, num_layers: int = 2,
                 init_range: float = 0.08, temperature: float | None = None,
                 tanh_constant: float | None = None, generator: torch.Generator | None = None):
        super().__init__()
        check_int("hidden_size", hidden_size, 1)
        check_int("num_layers", num_layers, 1)
        check_number("init_range", init_range, 0, low_open=True)
        self.temperature = None if temperature is None else check_number("temperature", temperature, 0, low_open=True)
        self.tanh_constant = (None if tanh_constant is None
                              else check_number("tanh_constant", tanh_constant, 0, low_open=True))
        self.hidden_size = hidden_size
        # Built with torch's default initialisation on a forked global RNG, then initialised below
        # from `generator`, so constructing a policy never perturbs torch's global RNG. (Not on the
        # meta device: its first use imports ~800 modules, a second of CPU in every replica.)
        with torch.random.fork_rng(devices=[]):
            self.start = nn.Parameter(torch.empty(hidden_size))
            # Stacked cells rather than nn.LSTM: one step at a time, nn.LSTM's CPU
            # path costs several times more per call.
            self.lstm = nn.ModuleList(nn.LSTMCell(hidden_size, hidden_size) for _ in range(num_layers))
            # Group -> its choices (None for a subset group): what every decision of the group must match.
            self._choices: dict[str, tuple | None] = {}
            heads: dict[str, nn.Module] = {}
            for d in decisions:
                if d.group in self._choices:
                    continue
                self._choices[d.group] = _choices(d)
                heads[_key(d.group)] = (_ChoiceHead(hidden_size, len(d.choices)) if isinstance(d, Categorical)
                                        else _AnchorHead(hidden_size))
            if len(heads) != len(self._choices):
                raise ConfigError("decisions", "group names collide once '.' is read as '/'", sorted(self._choices))
            self.heads = nn.ModuleDict(heads)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-init_range, init_range, generator=generator)
        self.set_decisions(decisions)

    def set_decisions(self, decisions: Sequence[Decision]) -> None:
        """Speak `decisions` from now on; they must use this policy's groups, with the same choices."""
        subsets = 0
        for d in decisions:
            if d.group not in self._choices:
                raise ConfigError("decisions", f"group {d.group!r} of {d.name} has no head in this policy",
                                  sorted(self._choices))
            if _choices(d) != self._choices[d.group]:
                raise ConfigError("decisions", f"{d.name} differs from the other decisions of group {d.group!r}")
            if isinstance(d, Subset):
                if any(not 0 <= c < subsets for c in d.candidates):
                    raise ConfigError(f"decisions.{d.name}", f"candidates {d.candidates} need anchors the "
                                      "controller has not passed", f"0..{subsets - 1}")
                subsets += 1
        self.decisions = tuple(decisions)
        # Choice -> index per decision, for teacher forcing.
        self._index = [{c: i for i, c in enumerate(d.choices)} if isinstance(d, Categorical) else None
                       for d in self.decisions]

    @torch_threads(1)
    def sample(self, n: int, generator: torch.Generator) -> tuple[list[tuple], torch.Tensor, torch.Tensor]:
        """`n` independent architectures' decision values, with their log-probabilities
        and entropies ([n] each, differentiable)."""
        actions, log_probs, entropies = self._run(n, None, None, generator)
        values = []
        for i in range(n):
            row = []
            for d, a in zip(self.decisions, actions):
                if isinstance(d, Categorical):
                    row.append(d.choices[int(a[i])])
                else:
                    row.append(tuple(c for c, bit in zip(d.candidates, a[i].tolist()) if bit))
            values.append(tuple(row))
        return values, log_probs, entropies

    @torch_threads(1)
    def log_prob(self, values_batch: Sequence[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities and entropies ([n] each) of given decision values, by teacher forcing.

        A row may be shorter than `decisions` if it is a prefix of them (a sample
        taken before the macro space grew): it is scored on its own decisions only.
        """
        n = len(values_batch)
        if n == 0:
            raise ConfigError("values_batch", "is empty")
        lengths = torch.tensor([len(v) for v in values_batch])
        if int(lengths.max()) > len(self.decisions):
            raise ConfigError("values_batch", f"a row has {int(lengths.max())} values",
                              f"at most {len(self.decisions)}")
        forced = []
        for t, d in enumerate(self.decisions):
            rows = [v[t] if t < len(v) else None for v in values_batch]
            if isinstance(d, Categorical):
                # Rows that have ended feed choice 0; their mask drops what follows.
                forced.append(torch.tensor([0 if v is None else self._index[t][v] for v in rows]))
            else:
                forced.append(torch.tensor([[float(v is not None and c in v) for c in d.candidates]
                                            for v in rows]).reshape(n, len(d.candidates)))
        mask = torch.arange(len(self.decisions))[:, None] < lengths[None, :]
        _, log_probs, entropies = self._run(n, forced, mask, None)
        return log_probs, entropies

    def _shape_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def _run(self, n: int, forced: list[torch.Tensor] | None, mask: torch.Tensor | None,
             generator: torch.Generator | None) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The one pass through the decisions that both sampling (`forced` None) and
        teacher forcing use, so that the two can never disagree."""
        x = self.start.expand(n, -1)
        zero = torch.zeros(n, self.hidden_size)
        state = [(zero, zero)] * len(self.lstm)
        anchors: list[torch.Tensor] = []
        actions: list[torch.Tensor] = []
        log_probs = torch.zeros(n)
        entropies = torch.zeros(n)
        for t, d in enumerate(self.decisions):
            for layer, cell in enumerate(self.lstm):
                state[layer] = cell(x, state[layer])
                x = state[layer][0]
            h = x
            head = self.heads[_key(d.group)]
            if isinstance(d, Categorical):
                logp = F.log_softmax(self._shape_logits(head.logits(h)), dim=-1)
                a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1) if forced is None else forced[t]
                lp = logp.gather(1, a.unsqueeze(1)).squeeze(1)
                ent = -(logp.exp() * logp).sum(-1)
                x = head.embedding(a)
            elif not d.candidates:
                a = torch.zeros(n, 0)
                lp = ent = torch.zeros(n)
                x = self.start.expand(n, -1)
                anchors.append(h)
            else:
                chosen = torch.stack(anchors)[list(d.candidates)]
                logits = self._shape_logits(head.logits(h, chosen))
                a = torch.bernoulli(torch.sigmoid(logits), generator=generator) if forced is None else forced[t]
                lp = -F.binary_cross_entropy_with_logits(logits, a, reduction="none").sum(-1)
                ent = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(logits), reduction="none").sum(-1)
                x = torch.einsum("nc,cnh->nh", a, chosen) / (1 + a.sum(-1, keepdim=True))
                anchors.append(h)
            if mask is not None:
                lp, ent = lp * mask[t], ent * mask[t]
            log_probs = log_probs + lp
            entropies = entropies + ent
            actions.append(a)
        return actions, log_probs, entropies

"""Batched beam search whose width shrinks as hypotheses complete (Midterm Q4).

Each step expands every live hypothesis of every item by every token and keeps, per item, the best ``width``
candidates, where ``width`` starts at ``k``. A kept candidate that ends in ``eos`` leaves the beam as a
completed hypothesis and the item's width drops by one; the search ends for an item when ``k`` hypotheses have
completed. So each item gets exactly ``k`` completed hypotheses (at ``max_len`` the survivors are forced to end),
the n-best list. Width 1 is greedy decoding.

Everything is a tensor over items: no Python loop over the words of a batch, only over time steps.
``best_combinations`` joins the n-best lists of independent words into the n-best of their sentence.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

NEG_INF = float("-inf")


def reorder(state: Any, index: torch.Tensor) -> Any:
    """``state`` (a tensor or nested tuple/list of tensors with rows in dim 0) with its rows taken at ``index``."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index)
    if isinstance(state, (tuple, list)):
        return type(state)(reorder(s, index) for s in state)
    if state is None:
        return None
    raise TypeError(f"cannot reorder a beam state of type {type(state).__name__}")


def beam_search(step: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]], state: Any, batch: int, k: int,
                max_len: int | torch.Tensor, *, sos: int, eos: int, length_norm: float = 0.0,
                pad: int = 0) -> dict[str, torch.Tensor]:
    """Shrinking-width beam search over ``batch`` items.

    ``step(prev_tokens [batch*k], state) -> (log_probs [batch*k, V], state)`` scores the next token of each row;
    rows ``i*k .. i*k+k-1`` belong to item ``i`` and ``state`` holds ``batch*k`` rows in that order.
    ``max_len`` (an int, or one per item, so an item's result never depends on its batch) caps the length:
    hypotheses still live at their cap end there.

    Returns, per item, the ``k`` completed hypotheses best first: ``tokens`` [batch, k, L] (ending in ``eos``,
    then ``pad``), ``lengths`` [batch, k] (with ``eos``), ``log_probs`` [batch, k] (sums of step log-probs) and
    ``scores`` [batch, k] by which they are ranked: ``log_probs / lengths ** length_norm`` (0: raw sums).
    """
    dev = _device(state)
    cap = torch.as_tensor(max_len, device=dev).long().expand(batch)
    if k < 1 or int(cap.min()) < 1:
        raise ValueError(f"beam width ({k}) and max_len must be >= 1")
    max_len = int(cap.max())
    rows = torch.arange(batch, device=dev)
    scores = torch.full((batch, k), NEG_INF, device=dev)
    scores[:, 0] = 0.0  # one live hypothesis (the empty prefix) to start with
    history = torch.zeros(batch, k, 0, dtype=torch.long, device=dev)
    prev = torch.full((batch * k,), sos, dtype=torch.long, device=dev)
    done_tokens = torch.full((batch, k, max_len), pad, dtype=torch.long, device=dev)
    done_logp = torch.full((batch, k), NEG_INF, device=dev)
    done_len = torch.ones(batch, k, dtype=torch.long, device=dev)
    n_done = torch.zeros(batch, dtype=torch.long, device=dev)
    rank = torch.arange(k, device=dev)
    for t in range(max_len):
        logp, state = step(prev, state)
        vocab = logp.shape[-1]
        cand = scores.unsqueeze(2) + logp.view(batch, k, vocab)  # dead slots stay -inf
        at_cap = cap == t + 1  # out of room: every survivor of these items must end here
        if at_cap.any():
            only_eos = torch.full_like(cand, NEG_INF)
            only_eos[..., eos] = cand[..., eos]
            cand = torch.where(at_cap[:, None, None], only_eos, cand)
        top, idx = cand.view(batch, k * vocab).topk(k, dim=1)  # best first
        slot, tok = idx // vocab, idx % vocab
        width = (k - n_done).unsqueeze(1)  # the beam shrinks by one per completed hypothesis
        kept = (rank < width) & (top > NEG_INF)
        history = torch.cat([history.gather(1, slot.unsqueeze(2).expand(-1, -1, t)), tok.unsqueeze(2)], dim=2)
        finished = kept & (tok == eos)
        if finished.any():
            where = n_done.unsqueeze(1) + finished.long().cumsum(1) - 1  # next free places in the done lists
            b, j = finished.nonzero(as_tuple=True)
            done_tokens[b, where[b, j], :t + 1] = history[b, j]
            done_logp[b, where[b, j]] = top[b, j]
            done_len[b, where[b, j]] = t + 1
            n_done = n_done + finished.sum(1)
        live = kept & (tok != eos)
        if not live.any():
            break
        scores = torch.where(live, top, torch.full_like(top, NEG_INF))
        state = reorder(state, (rows.unsqueeze(1) * k + slot).view(-1))
        prev = torch.where(live, tok, torch.full_like(tok, eos)).view(-1)
    ranked = done_logp / done_len.float() ** length_norm if length_norm else done_logp.clone()
    order = ranked.argsort(dim=1, descending=True, stable=True)
    return {"tokens": done_tokens.gather(1, order.unsqueeze(2).expand_as(done_tokens)),
            "lengths": done_len.gather(1, order), "log_probs": done_logp.gather(1, order),
            "scores": ranked.gather(1, order)}


def _device(state: Any) -> torch.device:
    """The device of the first tensor in ``state`` (CPU when it holds none)."""
    stack = [state]
    while stack:
        s = stack.pop(0)
        if isinstance(s, torch.Tensor):
            return s.device
        if isinstance(s, (tuple, list)):
            stack.extend(s)
    return torch.device("cpu")


def best_combinations(slots: Sequence[Sequence[tuple[str, float]]], n: int, sep: str = "") -> list[tuple[str, float]]:
    """The ``n`` best ways to take one candidate from each slot, texts joined by ``sep`` and scores summed, best
    first: the n-best of a sentence from its words' n-best lists (the words scored independently). Exact: the n
    best of a product come from the n best of its first slots. Ties keep the slots' order. Each kept way points
    back to its prefix, so a line of 100k words costs O(words x n^2), not a copy of every prefix."""
    if n < 1:
        raise ValueError("n must be >= 1")
    kept: list[tuple[float, Any]] = [(0.0, None)]  # (score, (prefix, text)) as a linked list
    for slot in slots:
        ways = [(score + s, (back, text)) for score, back in kept for text, s in slot[:n]]
        kept = sorted(ways, key=lambda w: -w[0])[:n]  # stable: ties stay in prefix-then-slot order
    out = []
    for score, back in kept:
        texts = []
        while back is not None:
            back, text = back
            texts.append(text)
        out.append((sep.join(reversed(texts)), score))
    return out

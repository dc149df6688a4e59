"""Seq2seq RNN transliteration (Mock Final Q6, Midterm Q4-Q5): Arabizi (Latin script) -> Arabic script.

An asynchronous sequence-to-sequence model, since a Latin word and its Arabic spelling do not line up character
for character (``sh`` -> ش, a short vowel -> nothing). A bidirectional GRU/LSTM encodes the source characters;
a GRU/LSTM decoder is fed the character it generated last (the seed's "output units aware of what's
generated") and the previous attentional vector, and attends over the encoder states (additive or
dot-product). Decoding is greedy, sampled, or a beam whose width shrinks as hypotheses complete (zoo/beam.py).

Options beyond the seed, each a config switch measured in the README: ``ensemble`` (members trained side by
side on the same batches, averaged in log-probability space when decoding), ``lm_weight`` (the beam's n-best
rescored with a character GRU language model of Arabic trained on the target side of the training pairs),
``lexicon_weight`` (a bonus added, when reranking the n-best, to a candidate that is an Arabic word of the
training pairs: ``target_lexicon``, data info, so it is in the checkpoint), ``word_weight`` (``word_weight`` x the
candidate's Zipf frequency in a large Arabic word list, ``word_frequencies``, also data info: 0 for a word not in
it), ``channel`` (noisy-channel members trained alongside, Arabic -> Arabizi: ``channel_weight`` x log p(source |
candidate) is added when reranking, so a candidate must also explain the Latin spelling it came from),
``length_norm``, teacher forcing with a decaying ratio, label smoothing.
"""
from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..beam import beam_search, best_combinations
from ..data.arabizi import (
    EOS_ID,
    PAD_ID,
    SOS_ID,
    UNK_ID,
    encode,
    normalize_source,
    normalize_target,
    read_pairs,
    visible,
)
from ..errors import ZooError
from ..registry import register_model
from .base import ZooModel

RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}
SENTENCE_PUNCT = frozenset(".,;:!?")  # never letters of a word in translate, whatever the training sources hold
MAX_CHUNK = 40  # longer words are transliterated in pieces this long: bounded memory for any input
# Words decoded at once. On a 2-core CPU, 64 words (x beam 10 x 7 members) ran 1,936 words in 13.3-14.0 s, 0.93 GB
# peak RSS against 15.3-16.4 s and 1.42 GB with 256: the beam's per-step tensors stay in cache. Same outputs.
DECODE_BATCH = 64
MAX_RERANK_WEIGHT = 100.0  # lexicon/word-list weights: beyond this the word evidence alone decides


# ---- attention --------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Scores of a decoder state (query) against the encoder states (keys), softmax over the real positions
    only, and the weighted sum of the values. ``additive``: v . tanh(W_k h_s + W_q q) (Bahdanau);
    ``dot``: q . (W_k h_s) (Luong's "general")."""

    def __init__(self, kind: str, query_dim: int, value_dim: int, dim: int):
        super().__init__()
        self.kind = kind
        self.key = nn.Linear(value_dim, dim if kind == "additive" else query_dim, bias=False)
        if kind == "additive":
            self.query = nn.Linear(query_dim, dim, bias=True)
            self.v = nn.Linear(dim, 1, bias=False)

    def keys(self, values: torch.Tensor) -> torch.Tensor:
        """Computed once per word, not once per output step."""
        return self.key(values)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query [N, T, Q] (T output steps at once), keys [N, S, K] -> scores [N, T, S]."""
        if self.kind == "additive":
            return self.v(torch.tanh(keys.unsqueeze(1) + self.query(query).unsqueeze(2))).squeeze(3)
        return torch.bmm(query, keys.transpose(1, 2))

    def forward(self, query, keys, values, mask, hard: bool = False):
        """query [N, T, Q], keys [N, S, K], values [N, S, D], mask [N, S] (True = real) -> context [N, T, D] and
        weights [N, T, S]: a softmax over the real positions only, or with ``hard`` the one-hot argmax
        (Midterm Q5's hand-computable simplification)."""
        scores = self.scores(query, keys).masked_fill(~mask.unsqueeze(1), float("-inf"))
        if hard:
            weights = F.one_hot(scores.argmax(2), scores.shape[2]).to(values.dtype)
        else:
            weights = scores.softmax(dim=2)
        return torch.bmm(weights, values), weights


# ---- one encoder-decoder ------------------------------------------------------------------------------------------
class Seq2Seq(nn.Module):
    """Embeddings, bidirectional encoder (packed: padding is never read), attentive decoder, output layer.

    The decoder RNN reads the previous output character; attention uses its state as the query; the context
    and the state are combined, optionally run through a second ("context") RNN, and projected to characters.
    No recurrence passes through the attention, so under full teacher forcing the whole target is one fused
    RNN call and one batched attention (several times faster on a CPU than a step loop); decoding, and
    training with a teacher-forcing ratio below 1, go one step at a time through the same layers.
    """

    def __init__(self, n_src: int, n_tgt: int, emb: int, hidden: int, layers: int, cell: str, attention: str,
                 dropout: float, context_rnn: bool):
        super().__init__()
        rnn = RNNS[cell]
        self.cell = cell
        self.src_emb = nn.Embedding(n_src, emb, padding_idx=PAD_ID)
        self.tgt_emb = nn.Embedding(n_tgt, emb, padding_idx=PAD_ID)
        self.encoder = rnn(emb, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.init_h = nn.Linear(2 * hidden, hidden)
        self.decoder = rnn(emb, hidden, batch_first=True)
        self.attention = Attention(attention, hidden, 2 * hidden, hidden)
        self.combine = nn.Linear(3 * hidden, hidden)
        self.context_rnn = nn.GRU(hidden, hidden, batch_first=True) if context_rnn else None
        self.out = nn.Linear(hidden, n_tgt)
        self.drop = nn.Dropout(dropout)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor):
        """-> (memory, state): memory = (keys, values, mask) read by every step; state = the decoder's start,
        a tuple of [N, H] tensors (rows in dim 0, so a beam can reorder them)."""
        packed = pack_padded_sequence(self.drop(self.src_emb(src)), src_len.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, final = self.encoder(packed)
        values, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        h_n = final[0] if self.cell == "lstm" else final
        h0 = torch.tanh(self.init_h(torch.cat([h_n[-2], h_n[-1]], dim=1)))  # last layer, both directions
        mask = torch.arange(src.shape[1], device=src.device) < src_len.unsqueeze(1)
        state = (h0,) + ((torch.zeros_like(h0),) if self.cell == "lstm" else ()) + (
            (torch.zeros_like(h0),) if self.context_rnn is not None else ())
        return (self.attention.keys(values), values, mask), state

    def decode(self, prev: torch.Tensor, state, memory):
        """Previous characters [N, T] -> logits [N, T, V], the state after them, attention weights [N, T, S]."""
        keys, values, mask = memory
        lstm = self.cell == "lstm"
        h0 = (state[0][None], state[1][None]) if lstm else state[0][None]
        hs, h = self.decoder(self.drop(self.tgt_emb(prev)), h0)
        context, weights = self.attention(hs, keys, values, mask)
        att = torch.tanh(self.combine(torch.cat([hs, context], dim=2)))
        new = (h[0][0], h[1][0]) if lstm else (h[0],)
        if self.context_rnn is not None:
            att, hc = self.context_rnn(att, state[-1][None])
            new = new + (hc[0],)
        return self.out(self.drop(att)), new, weights

    def step(self, prev: torch.Tensor, state, memory):
        """One output character: logits [N, V], the next state, attention weights [N, S]."""
        logits, state, weights = self.decode(prev[:, None], state, memory)
        return logits[:, 0], state, weights[:, 0]

    def teacher_forced(self, src, src_len, tgt, ratio: float) -> torch.Tensor:
        """Logits [B, T, V] for the targets. Each step is fed the reference character with probability ``ratio``,
        else the model's own previous prediction (coin flips from torch's global RNG: checkpointed)."""
        memory, state = self.encode(src, src_len)
        inputs = torch.cat([torch.full_like(tgt[:, :1], SOS_ID), tgt[:, :-1]], dim=1)
        if ratio >= 1.0:
            return self.decode(inputs, state, memory)[0]
        prev, logits = inputs[:, 0], []
        for t in range(tgt.shape[1]):
            step_logits, state, _ = self.step(prev, state, memory)
            logits.append(step_logits)
            if t + 1 < tgt.shape[1]:
                own = torch.rand(tgt.shape[0], device=tgt.device) >= ratio
                prev = torch.where(own, step_logits.argmax(1).detach(), inputs[:, t + 1])
        return torch.stack(logits, dim=1)


class CharLM(nn.Module):
    """A character GRU language model of the target script: log p(word) to rescore the beam's n-best."""

    def __init__(self, n_tgt: int, emb: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(n_tgt, emb, padding_idx=PAD_ID)
        self.rnn = nn.GRU(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_tgt)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of each target character (ending in <eos>) given the ones before it."""
        inp = torch.cat([torch.full_like(tgt[:, :1], SOS_ID), tgt[:, :-1]], dim=1)
        return self.out(self.rnn(self.emb(inp))[0])

    def log_prob(self, tgt: torch.Tensor) -> torch.Tensor:
        """Summed log-probability [B] of padded sequences (padding contributes nothing)."""
        return sequence_log_prob(self(tgt), tgt)


def reverse_words(tgt: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's characters in reverse order, <eos> and padding left where they are ([B, T], lengths with <eos>)."""
    pos = torch.arange(tgt.shape[1], device=tgt.device).unsqueeze(0)
    n = (lengths - 1).unsqueeze(1)  # characters before <eos>
    return tgt.gather(1, torch.where(pos < n, n - 1 - pos, pos))


def append_eos(src: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rows [B, S] with <eos> written after each row's ``lengths`` characters: [B, S + 1]."""
    out = F.pad(src, (0, 1), value=PAD_ID)
    return out.scatter(1, lengths.unsqueeze(1), EOS_ID)


def sequence_log_prob(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Summed log-probability [B] of padded target rows under teacher-forced logits [B, T, V]."""
    logp = logits.log_softmax(-1).gather(2, tgt.unsqueeze(2)).squeeze(2)
    return (logp * (tgt != PAD_ID)).sum(1)


def token_nll(logits: torch.Tensor, tgt: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged per real target token (padding masked)."""
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD_ID, label_smoothing=smoothing)


# ---- the registered model -------------------------------------------------------------------------------------------
@register_model("translit_rnn", family="seq2seq", config="configs/translit.yaml",
                description="Arabizi -> Arabic transliteration: bi-GRU/LSTM encoder, attentive decoder fed its "
                            "own output, shrinking beam search (Mock Final Q6, Midterm Q4-Q5)")
class TranslitRNN(ZooModel):
    """Character seq2seq with attention. ``src_vocab``/``tgt_vocab`` come from the data (and the checkpoint)."""

    evaluates_files = True  # zoo eval --data PATH: word pairs from any file

    def __init__(self, src_vocab: Sequence[str], tgt_vocab: Sequence[str], emb: int = 64, hidden: int = 128,
                 layers: int = 1, cell: Literal["gru", "lstm"] = "gru",
                 attention: Literal["additive", "dot"] = "additive", dropout: float = 0.3,
                 teacher_forcing: float = 1.0, tf_decay: float = 1.0, tf_min: float = 0.0,
                 label_smoothing: float = 0.0, context_rnn: bool = False, ensemble: int = 1, r2l: int = 0,
                 beam: int = 5, length_norm: float = 0.0, lm_hidden: int = 0, lm_weight: float = 0.0,
                 max_len_ratio: float = 2.0, target_lexicon: Sequence[str] = (), lexicon_weight: float = 0.0,
                 word_frequencies: Sequence[Sequence] = (), word_weight: float = 0.0, channel: int = 0,
                 channel_weight: float = 0.0):
        super().__init__()
        if min(emb, hidden, layers, ensemble, beam) < 1 or max(emb, hidden, lm_hidden) > 8192 \
                or max(layers, ensemble, r2l, channel) > 16 or beam > 1000:
            raise ValueError("emb, hidden, layers, ensemble and beam must be >= 1; emb, hidden, lm_hidden <= 8192, "
                             "layers, ensemble, r2l, channel <= 16 and beam <= 1000")
        if not (0 <= dropout < 1 and 0 <= teacher_forcing <= 1 and 0 < tf_decay <= 1 and 0 <= tf_min <= 1
                and 0 <= label_smoothing < 1):
            raise ValueError("dropout, label_smoothing in [0, 1); teacher_forcing, tf_min in [0, 1]; "
                             "tf_decay in (0, 1]")
        if min(lm_hidden, lm_weight, length_norm, r2l, channel) < 0 or max_len_ratio <= 0:
            raise ValueError("lm_hidden, lm_weight, length_norm, r2l, channel must be >= 0 and max_len_ratio > 0")
        if lm_weight > 0 and lm_hidden == 0:
            raise ValueError("lm_weight > 0 needs a language model: set lm_hidden > 0")
        if channel_weight > 0 and channel == 0:
            raise ValueError("channel_weight > 0 needs channel members: set channel > 0")
        for key, value in (("lexicon_weight", lexicon_weight), ("word_weight", word_weight),
                           ("channel_weight", channel_weight)):
            if not 0 <= value <= MAX_RERANK_WEIGHT:
                raise ValueError(f"{key} must be in [0, {MAX_RERANK_WEIGHT:g}]")
        self.src_vocab, self.tgt_vocab = list(src_vocab), list(tgt_vocab)
        self.src_index = {c: i for i, c in enumerate(self.src_vocab)}
        self.tf, self.tf_decay, self.tf_min = teacher_forcing, tf_decay, tf_min
        self.smoothing, self.beam, self.length_norm = label_smoothing, beam, length_norm
        self.lm_weight, self.max_len_ratio = lm_weight, max_len_ratio
        # the Arabic words of the training pairs (data info, so in the checkpoint): a bonus when reranking
        self.target_lexicon = frozenset(normalize_target(w) for w in target_lexicon)
        self.lexicon_weight = lexicon_weight
        self.word_buckets = word_frequencies  # (Zipf value, its words joined by spaces): see word_zipf
        self.word_weight = word_weight
        self.members = nn.ModuleList(Seq2Seq(len(self.src_vocab), len(self.tgt_vocab), emb, hidden, layers, cell,
                                             attention, dropout, context_rnn) for _ in range(ensemble))
        # right-to-left members: they read the word's last character first, and rescore the beam's n-best
        self.r2l = nn.ModuleList(Seq2Seq(len(self.src_vocab), len(self.tgt_vocab), emb, hidden, layers, cell,
                                         attention, dropout, context_rnn) for _ in range(r2l))
        # noisy-channel members, the other way round: Arabic in, Arabizi out; they rescore the n-best
        self.channel = nn.ModuleList(Seq2Seq(len(self.tgt_vocab), len(self.src_vocab), emb, hidden, layers, cell,
                                             attention, dropout, context_rnn) for _ in range(channel))
        self.channel_weight = channel_weight
        self.lm = CharLM(len(self.tgt_vocab), emb, lm_hidden) if lm_hidden else None
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))  # drives the teacher-forcing decay

    @cached_property
    def word_zipf(self) -> dict[str, float]:
        """Zipf frequency (log10 per billion words, about 1-7.5) of the words of a large Arabic word list. Built on
        first use: 582k words take 0.2 s, which every construction of the model (a config check, a load) paid."""
        return {w: float(z) for z, words in self.word_buckets for w in words.split()}

    # ---- training -----------------------------------------------------------------------------------------------
    def teacher_forcing_ratio(self) -> float:
        return max(self.tf_min, self.tf * self.tf_decay ** int(self.epochs_done))

    def training_step(self, batch, optimizer="main"):
        src, src_len, tgt, tgt_len = batch
        ratio = self.teacher_forcing_ratio() if self.training else 1.0
        rev = reverse_words(tgt, tgt_len) if len(self.r2l) else None
        latin, arabic_len = self._channel_io(src, src_len, tgt_len) if len(self.channel) else (None, None)
        nll = torch.stack([token_nll(m.teacher_forced(src, src_len, tgt, ratio), tgt, self.smoothing)
                           for m in self.members] +
                          [token_nll(m.teacher_forced(src, src_len, rev, ratio), rev, self.smoothing)
                           for m in self.r2l] +
                          [token_nll(m.teacher_forced(tgt, arabic_len, latin, ratio), latin, self.smoothing)
                           for m in self.channel]).mean()
        out = {"loss": nll, "nll": nll.detach()}
        if self.lm is not None:
            out["lm_nll"] = token_nll(self.lm(tgt), tgt)
            out["loss"] = nll + out["lm_nll"]  # disjoint parameters: the sum trains both
        return out

    @staticmethod
    def _channel_io(src, src_len, tgt_len):
        """What the channel members learn to write (the source, then <eos>) and how many characters of the
        Arabic word they read (its <eos> left out)."""
        return append_eos(src, src_len), (tgt_len - 1).clamp(min=1)

    def validation_step(self, batch):
        src, src_len, tgt, tgt_len = batch
        logits = [m.teacher_forced(src, src_len, tgt, 1.0) for m in self.members]
        nll = torch.stack([token_nll(lg, tgt) for lg in logits]).mean()
        real = tgt != PAD_ID
        char_acc = ((logits[0].argmax(2) == tgt) & real).sum() / real.sum()
        # word accuracy of greedy decoding; per word, so exact only when the whole split is one batch
        # (configs/translit.yaml sets train.eval_batch_size above the validation size)
        pred = self.greedy(src, src_len)["tokens"]
        correct = same_words(pred, tgt).float().mean()
        out = {"loss": nll, "char_acc": char_acc, "word_acc": correct, "word_err": 1 - correct}
        if len(self.channel):
            latin, arabic_len = self._channel_io(src, src_len, tgt_len)
            out["channel_nll"] = torch.stack([token_nll(m.teacher_forced(tgt, arabic_len, latin, 1.0), latin)
                                              for m in self.channel]).mean()
        if self.lm is not None:
            out["lm_nll"] = token_nll(self.lm(tgt), tgt)
        return out

    def on_epoch_end(self, epoch):
        self.epochs_done += 1
        return {"teacher_forcing": self.teacher_forcing_ratio()}

    # ---- decoding (batched over words) --------------------------------------------------------------------------
    def _max_len(self, src_len: torch.Tensor) -> torch.Tensor:
        """Longest output allowed per word, <eos> included (the corpus's ratio is below 1)."""
        return (self.max_len_ratio * src_len).long() + 2

    def _start(self, src, src_len, repeat: int = 1):
        """Every member's memory and start state, each row repeated ``repeat`` times (beam rows)."""
        memories, states = [], []
        for m in self.members:
            memory, state = m.encode(src, src_len)
            memories.append(tuple(x.repeat_interleave(repeat, 0) for x in memory))
            states.append(tuple(x.repeat_interleave(repeat, 0) for x in state))
        return memories, tuple(states)

    def _step(self, memories):
        """The ensemble's next-character log-probabilities: the members' log-softmaxes averaged. Only what a
        word can hold is emitted: never <pad>, <unk> or <sos> (no training target holds them, and they print as
        nothing), and <eos> not right after <sos> (fairseq's min_len 1). So no decoder, greedy, sampled or beam,
        answers an empty word, and no beam slot is spent on one."""
        def step(prev, states):
            outs = [m.step(prev, s, mem) for m, s, mem in zip(self.members, states, memories)]
            logp = torch.stack([o[0].log_softmax(-1) for o in outs]).mean(0)
            logp[:, [PAD_ID, UNK_ID, SOS_ID]] = float("-inf")
            logp[:, EOS_ID] = logp[:, EOS_ID].masked_fill(prev == SOS_ID, float("-inf"))
            self._last_weights = outs[0][2]
            return logp, tuple(o[1] for o in outs)
        return step

    @torch.no_grad()
    def greedy(self, src, src_len, temperature: float = 0.0, generator: torch.Generator | None = None,
               attention: bool = False) -> dict:
        """Greedy (``temperature`` 0) or sampled decoding: tokens [B, L] ending in <eos> then padding, the
        log-probabilities of the chosen characters summed [B], optionally attention weights [B, L, S]."""
        memories, states = self._start(src, src_len)
        step = self._step(memories)
        b = src.shape[0]
        prev = torch.full((b,), SOS_ID, dtype=torch.long, device=src.device)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        score = torch.zeros(b, device=src.device)
        tokens, weights = [], []
        cap = self._max_len(src_len)
        for t in range(int(cap.max())):
            logp, states = step(prev, states)
            if temperature > 0:
                probs = (logp / temperature).softmax(-1)
                tok = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(src.device)
            else:
                tok = logp.argmax(-1)
            tok = torch.where(cap == t + 1, torch.full_like(tok, EOS_ID), tok)  # out of room: end here
            score = score + torch.where(done, torch.zeros_like(score), logp.gather(1, tok[:, None]).squeeze(1))
            tokens.append(torch.where(done, torch.full_like(tok, PAD_ID), tok))
            weights.append(self._last_weights)
            done = done | (tok == EOS_ID)
            prev = tok
            if bool(done.all()):
                break
        out = {"tokens": torch.stack(tokens, 1), "log_probs": score}
        if attention:
            out["attention"] = torch.stack(weights, 1)
        return out

    @torch.no_grad()
    def beam_decode(self, src, src_len, k: int | None = None, length_norm: float | None = None,
                    lm_weight: float | None = None, lexicon_weight: float | None = None,
                    word_weight: float | None = None, channel_weight: float | None = None) -> dict:
        """The shrinking beam's ``k`` completed hypotheses per word, best first, optionally rescored by the
        right-to-left members, the LM, the channel members (``channel_weight`` x log p(source | candidate)), the
        target lexicon (``lexicon_weight`` added to the score of a candidate that is a training target word) and
        the word list (``word_weight`` x its Zipf frequency): tokens [B, k, L], log_probs [B, k] (the
        translation model's), scores [B, k] (what ranks them)."""
        k = k or self.beam
        alpha = self.length_norm if length_norm is None else length_norm
        lam = self.lm_weight if lm_weight is None else lm_weight
        lex = self.lexicon_weight if lexicon_weight is None else lexicon_weight
        ww = self.word_weight if word_weight is None else word_weight
        cw = self.channel_weight if channel_weight is None else channel_weight
        memories, states = self._start(src, src_len, repeat=k)
        out = beam_search(self._step(memories), states, src.shape[0], k, self._max_len(src_len), sos=SOS_ID,
                          eos=EOS_ID, length_norm=0.0, pad=PAD_ID)
        score = out["log_probs"]
        b, kk, length = out["tokens"].shape
        flat = out["tokens"].view(b * kk, length)
        rows = torch.arange(b, device=src.device).repeat_interleave(kk)
        if len(self.r2l):  # every member's log p(word), left-to-right and right-to-left, averaged
            rev = reverse_words(flat, out["lengths"].view(-1))
            r2l = [sequence_log_prob(m.teacher_forced(src[rows], src_len[rows], rev, 1.0), rev).view(b, kk)
                   for m in self.r2l]
            score = (len(self.members) * score + sum(r2l)) / (len(self.members) + len(self.r2l))
        if lam and self.lm is not None:
            score = score + lam * self.lm.log_prob(flat).view(b, kk)
        if alpha:
            score = score / out["lengths"].float() ** alpha
        # after length normalisation: word-level evidence, whatever the length
        if cw and len(self.channel):  # log p(source | candidate), the same source for a word's candidates
            latin, arabic_len = self._channel_io(src[rows], src_len[rows], out["lengths"].view(-1))
            channel = [sequence_log_prob(m.teacher_forced(flat, arabic_len, latin, 1.0), latin)
                       for m in self.channel]
            score = score + cw * (sum(channel) / len(channel)).view(b, kk)
        words = [self.decode_tokens(row) for row in flat] if (lex and self.target_lexicon) or ww else []
        zipf = self.word_zipf if ww else {}
        bonus = [lex * (w in self.target_lexicon) + ww * zipf.get(w, 0.0) for w in words]
        if bonus:
            score = score + torch.tensor(bonus, dtype=score.dtype, device=score.device).view(b, kk)
        order = score.argsort(dim=1, descending=True, stable=True)
        return {"tokens": out["tokens"].gather(1, order[..., None].expand_as(out["tokens"])),
                "log_probs": out["log_probs"].gather(1, order), "scores": score.gather(1, order)}

    # ---- text in, text out -------------------------------------------------------------------------------------------
    def decode_tokens(self, row: torch.Tensor) -> str:
        chars = []
        for i in row.tolist():
            if i == EOS_ID:
                break
            if i >= len(SPECIALS_SET):
                chars.append(self.tgt_vocab[i])
        return "".join(chars)

    def encode_words(self, words: Sequence[str]):
        return encode([normalize_source(w) for w in words], self.src_index)

    @torch.no_grad()
    def transliterate(self, words: Sequence[str], beam: int = 1, nbest: int = 1, temperature: float = 0.0,
                      generator: torch.Generator | None = None, batch_size: int | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      cache: dict | None = None) -> list[list[tuple[str, float]]]:
        """Words (no spaces) -> per word its ``nbest`` (Arabic, score) candidates, best first. The score is the
        log-probability, or with rescoring (right-to-left members, LM, length_norm) the value that ranks them.
        Batched, sorted by length so padding stays short; duplicates are decoded once (and words already in
        ``cache``, a dict the caller keeps across calls with these same settings, not at all)."""
        was = self.training
        self.eval()
        found: dict[str, list[tuple[str, float]]] = {} if cache is None else cache
        unique = sorted({w for w in words if w not in found}, key=lambda w: (len(w), w))
        dev, batch_size = self.device, batch_size or DECODE_BATCH
        for start in range(0, len(unique), batch_size):
            chunk = unique[start:start + batch_size]
            src, src_len = self.encode_words(chunk)
            src, src_len = src.to(dev), src_len.to(dev)
            if beam > 1 or nbest > 1:
                out = self.beam_decode(src, src_len, k=max(beam, nbest))
                for w, toks, lp in zip(chunk, out["tokens"], out["scores"]):
                    found[w] = [(self.decode_tokens(t), float(s)) for t, s in zip(toks[:nbest], lp[:nbest])]
            else:
                out = self.greedy(src, src_len, temperature=temperature, generator=generator)
                for w, toks, lp in zip(chunk, out["tokens"], out["log_probs"]):
                    found[w] = [(self.decode_tokens(toks), float(lp))]
            if progress is not None:
                progress(min(start + batch_size, len(unique)), len(unique))
        self.train(was)
        return [found[w] for w in words]

    def translate(self, lines: Sequence[str], beam: int | None = None, nbest: int = 1, temperature: float = 0.0,
                  seed: int = 0, batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
                  cache: dict | None = None) -> list[list[tuple[str, list[tuple[str, float]]]]]:
        """Lines of text -> per line, per whitespace-separated token, (token, n-best candidates with log-probs).

        A token is cut into words at punctuation (``ahlan,kifak`` -> ``ahlan`` ``,`` ``kifak``; $ and the ' of 3'
        are letters of Arabizi: see split_token), and the punctuation is kept where it was. Digits and
        punctuation alone pass through unchanged (inside a word, digits are letters: 3 ع, 7 ح, 2 ء), and so does
        a word with no letter of the Latin alphabet the model was trained on (Arabic script already, emoji, other
        scripts). Invisible format characters (zero-width marks, a BOM) inside a word are dropped before it is
        decoded, as the data module drops them from training pairs; around it they stay, like punctuation. A token
        of several words gets the n best combinations of their candidates (scores summed), and so does a word
        longer than MAX_CHUNK characters, decoded in pieces. ``cache``: a dict kept by the caller across calls
        with the same settings (a long file, block by block); not used when sampling."""
        beam = 1 if temperature > 0 else (self.beam if beam is None else beam)
        if beam < 1 or nbest < 1:
            raise ZooError("--beam and --nbest must be >= 1")
        plan, words = [], []
        for line in lines:
            row = []
            for token in line.split():
                parts = [(text, _chunks(visible(text)) if is_word else None)
                         for text, is_word in self.split_token(token)]
                row.append((token, parts))
                words.extend(piece for _, pieces in parts if pieces for piece in pieces)
            plan.append(row)
        gen = torch.Generator().manual_seed(seed)
        if temperature > 0:
            cache = None  # no reuse across calls: each call draws its own samples
        found = dict(zip(words, self.transliterate(words, beam, nbest, temperature, gen, batch_size, progress,
                                                   cache)))
        out = []
        for row in plan:
            line_out = []
            for token, parts in row:  # punctuation is a slot of one candidate; a long word, a slot per piece
                slots = [[(t, 0.0)] if ps is None else found[p] for t, ps in parts for p in (ps or [None])]
                line_out.append((token, best_combinations(slots, nbest)))
            out.append(line_out)
        return out

    def split_token(self, token: str) -> list[tuple[str, bool]]:
        """The token (NFC) cut into runs of word characters and runs of punctuation: [(text, is_word)], joined
        back they give the token. Letters and digits are word characters; so is another symbol that training saw
        in a source word ($ ش, the ' of 3' غ), unless it is sentence punctuation (. , ; : ! ?, dashes, brackets,
        quotes), which a few malformed training lines hold (``2017-03-07 00:00:00``, ``shater.``). A mark such as
        ' opens no word and closes one only after a digit (3' 9' 6'), so ``'ahlan'`` is a quoted word. A run is
        a word only if it holds a letter the training sources hold."""
        token = unicodedata.normalize("NFC", token)
        letters, word_chars = self._source_chars
        if word_chars.issuperset(token):  # the common case, one plain word: no loop over its characters
            runs = [(token, False)]
        else:
            runs = [("".join(chars), punct) for punct, chars in itertools.groupby(token, self._is_punct)]
        out = []
        for text, punct in runs:
            out += [(text, False)] if punct else _quotes_off(text)
        return [(text, word and not letters.isdisjoint(text.lower())) for text, word in out]

    @cached_property
    def _source_chars(self) -> tuple[frozenset[str], frozenset[str]]:
        """(the letters of the training sources, every character of them that is no punctuation here)."""
        chars = [c for c in self.src_vocab if len(c) == 1]
        return frozenset(c for c in chars if c.isalpha()), frozenset(c for c in chars if not self._is_punct(c))

    def _is_punct(self, c: str) -> bool:
        if c.isalnum() or unicodedata.category(c) == "Cf":  # an invisible mark (ZWSP, BOM) never cuts a word
            return False
        return c in SENTENCE_PUNCT or unicodedata.category(c) in ("Pd", "Ps", "Pe", "Pi", "Pf") \
            or c not in self.src_index

    # ---- inspection ------------------------------------------------------------------------------------------------
    def visuals(self, batch):
        """A table of validation words (source, reference, greedy prediction) and attention heat maps."""
        src, src_len, tgt, _ = batch
        out = self.greedy(src, src_len, attention=True)
        rows = []
        for i in range(min(16, len(src))):
            ref, pred = self.decode_tokens(tgt[i]), self.decode_tokens(out["tokens"][i])
            rows.append((self.source_text(src[i]), ref, pred, "✓" if ref == pred else "✗"))
        from ..visuals import table

        return {"valid_words": table(("source", "reference", "prediction", "ok"), rows),
                "attention": self.attention_figure(src[:4], src_len[:4], out["tokens"][:4], out["attention"][:4])}

    def source_text(self, row: torch.Tensor) -> str:
        return "".join(self.src_vocab[i] if i != UNK_ID else "?" for i in row.tolist() if i != PAD_ID)

    def attention_figure(self, src, src_len, tokens, weights):
        """Input characters (columns) x output characters (rows) for a few words."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(src), figsize=(3.2 * len(src), 3.2), squeeze=False)
        for ax, s, n, toks, w in zip(axes[0], src, src_len, tokens, weights):
            n_out = int((toks != PAD_ID).sum())
            w = w[:n_out, :int(n)].float().cpu()
            ax.imshow(w.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(int(n)), [self.src_vocab[i] for i in s[:int(n)].tolist()])
            ax.set_yticks(range(n_out), [self.tgt_vocab[i] if i != EOS_ID else "</s>" for i in toks[:n_out].tolist()])
        fig.suptitle("attention: input characters (x) by output characters (y)")
        fig.tight_layout()
        return fig

    # ---- evaluation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data, ctx):
        """Word accuracy (exact match after NFC), top-5 accuracy from the beam and character error rate on the
        validation words (or ``--data PATH``), with a rule-based mapping and the nearest training word as
        baselines on the same words."""
        path = ctx.options.get("data")
        pairs = read_pairs(path, log=ctx.log) if path else data.texts("val")
        sources = [s for s, _ in pairs]
        refs = [normalize_target(t) for _, t in pairs]
        k = max(5, self.beam)
        top5 = self.transliterate(sources, beam=k, nbest=5)
        model_beam = top5 if k == self.beam else self.transliterate(sources, beam=self.beam, nbest=1)
        greedy = self.transliterate(sources, beam=1, nbest=1)
        out = {"n_words": len(pairs), "data": str(path) if path else "validation split",
               "decoding": {"beam": self.beam, "length_norm": self.length_norm, "lm_weight": self.lm_weight,
                            "lexicon_weight": self.lexicon_weight, "lexicon_words": len(self.target_lexicon),
                            "word_weight": self.word_weight, "word_list_words": len(self.word_zipf),
                            "ensemble": len(self.members), "r2l": len(self.r2l), "channel": len(self.channel),
                            "channel_weight": self.channel_weight},
               **scores([c[0][0] for c in model_beam], refs),
               "top5_accuracy": sum(r in [unicodedata.normalize("NFC", c) for c, _ in cand[:5]]
                                    for cand, r in zip(top5, refs)) / len(refs),  # NFC, as top-1
               "greedy": scores([c[0][0] for c in greedy], refs)}
        if ctx.baselines:
            out["baselines"] = {
                "rule_based": scores([rule_based(s) for s in sources], refs),
                "nearest_training_word": scores(nearest_words(sources, data.texts("train")), refs)}
        return out


SPECIALS_SET = (PAD_ID, UNK_ID, SOS_ID, EOS_ID)


def _is_mark(c: str) -> bool:
    """An apostrophe-like mark (other punctuation, not sentence punctuation): a letter of Arabizi after a digit."""
    return unicodedata.category(c) == "Po" and c not in SENTENCE_PUNCT


def _chunks(word: str) -> list[str]:
    """A word in pieces of at most MAX_CHUNK characters, decoded one by one."""
    return [word[i:i + MAX_CHUNK] for i in range(0, len(word), MAX_CHUNK)]


def _is_edge(c: str) -> bool:
    """A quote-like mark, or an invisible one (an RLM after a closing quote): what a word's edges shed."""
    return _is_mark(c) or unicodedata.category(c) == "Cf"


def _quotes_off(text: str) -> list[tuple[str, bool]]:
    """[(text, is_word)]: the marks that open a word, or close it after anything but a digit, are quotes."""
    if not (_is_edge(text[0]) or _is_edge(text[-1])):
        return [(text, True)]
    i, j = 0, len(text)
    while i < j and _is_edge(text[i]):
        i += 1
    k = j
    while k > i and _is_edge(text[k - 1]):
        k -= 1
    if k < j:
        j = k + 1 if text[k - 1].isdigit() else k
    return [(t, word) for t, word in ((text[:i], False), (text[i:j], True), (text[j:], False)) if t]


def same_words(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """[B] bool: the decoded rows (ending in <eos>, then padding) equal the targets."""
    width = max(pred.shape[1], tgt.shape[1])

    def pad(x):
        return F.pad(x, (0, width - x.shape[1]), value=PAD_ID)

    return (pad(pred) == pad(tgt)).all(1)


# ---- metrics and baselines ------------------------------------------------------------------------------------------
def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """Word accuracy (exact match, NFC) and character error rate (edits / reference characters)."""
    preds = [unicodedata.normalize("NFC", p) for p in preds]
    edits = sum(levenshtein(p, r) for p, r in zip(preds, refs))
    return {"word_accuracy": sum(p == r for p, r in zip(preds, refs)) / len(refs),
            "cer": edits / max(1, sum(len(r) for r in refs))}


#: Longest-match conventions of the corpus README (digits and $ for Arabic letters) plus the usual Latin ones.
RULES = {
    "3'": "غ", "gh": "غ", "sh": "ش", "ch": "ش", "kh": "خ", "th": "ث", "dh": "ذ", "ee": "ي", "oo": "و", "ou": "و",
    "aa": "ا", "2": "ء", "3": "ع", "5": "خ", "6": "ط", "7": "ح", "8": "ق", "9": "ص", "$": "ش",
    "a": "ا", "b": "ب", "c": "ك", "d": "د", "e": "ي", "f": "ف", "g": "ج", "h": "ه", "i": "ي", "j": "ج", "k": "ك",
    "l": "ل", "m": "م", "n": "ن", "o": "و", "p": "ب", "q": "ق", "r": "ر", "s": "س", "t": "ت", "u": "و", "v": "ف",
    "w": "و", "x": "كس", "y": "ي", "z": "ز",
}


def rule_based(word: str) -> str:
    """Baseline: longest-match character mapping; a final 'a' is the feminine ending ه, other unknown
    characters are dropped."""
    out, i = [], 0
    longest = max(map(len, RULES))
    while i < len(word):
        for n in range(longest, 0, -1):
            piece = word[i:i + n]
            if piece in RULES:
                out.append("ه" if piece == "a" and i == len(word) - 1 and i > 0 else RULES[piece])
                i += n
                break
        else:
            i += 1
    return "".join(out)


def nearest_words(words: list[str], train: list[tuple[str, str]]) -> list[str]:
    """Baseline: the Arabic of the training word at the smallest edit distance from each word (first in file
    order on ties). Edit distances are computed as tensors, one (query length, train length) bucket at a time."""
    chars = {c: i + 1 for i, c in enumerate(sorted({c for w in words for c in w} | {c for s, _ in train for c in s}))}
    def by_length(items):
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(items):
            groups.setdefault(len(w), []).append(i)
        return {n: (torch.tensor(ix), torch.tensor([[chars[c] for c in items[i]] for i in ix]).view(len(ix), n))
                for n, ix in groups.items()}
    qs, rs = by_length(words), by_length([s for s, _ in train])
    best = torch.full((len(words),), 10 ** 6, dtype=torch.long)
    arg = torch.zeros(len(words), dtype=torch.long)
    for _, (qi, q) in sorted(qs.items()):
        for _, (ri, r) in sorted(rs.items()):
            d = _edit_distance(q, r)  # [nq, nr]
            value, where = d.min(1)
            pick = ri[where]
            better = (value < best[qi]) | ((value == best[qi]) & (pick < arg[qi]))
            best[qi] = torch.where(better, value, best[qi])
            arg[qi] = torch.where(better, pick, arg[qi])
    return [train[i][1] for i in arg.tolist()]


def _edit_distance(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Levenshtein distances [nq, nr] between the rows of q [nq, lq] and r [nr, lr] (equal-length rows)."""
    nq, lq = q.shape
    nr, lr = r.shape
    prev = torch.arange(lr + 1, dtype=torch.int16).expand(nq, nr, lr + 1)
    prev = [prev[..., j] for j in range(lr + 1)]
    for i in range(1, lq + 1):
        cur = [torch.full((nq, nr), i, dtype=torch.int16)]
        for j in range(1, lr + 1):
            sub = prev[j - 1] + (q[:, i - 1, None] != r[None, :, j - 1]).to(torch.int16)
            cur.append(torch.minimum(torch.minimum(prev[j], cur[j - 1]) + 1, sub))
        prev = cur
    return prev[lr]

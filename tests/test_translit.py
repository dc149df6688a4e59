"""Arabizi -> Arabic seq2seq: the shrinking beam (Midterm Q4), attention (Midterm Q5), padding, the corpus
reader, checkpoints and the `zoo translit` command. The corpus is read from ../shared/data/arabizi (never
skipped: a missing corpus is a failure)."""
from __future__ import annotations

import io
import itertools
import json
import math
import random
import sys

import pytest
import torch

from zoo.beam import beam_search, best_combinations
from zoo.checkpoint import load_run
from zoo.cli import main
from zoo.config import load_config
from zoo.data import build_data, create_data
from zoo.data.arabizi import EOS_ID, PAD_ID, SOS_ID, UNK_ID, read_pairs
from zoo.errors import ZooError
from zoo.models.translit import (
    Attention,
    TranslitRNN,
    _edit_distance,
    append_eos,
    levenshtein,
    nearest_words,
    reverse_words,
    rule_based,
    scores,
    token_nll,
)
from zoo.registry import create_model
from zoo.trainer import fit

SRC = ["<pad>", "<unk>", "<sos>", "<eos>", *"$'0123456789abcdefghijklmnopqrstuvwxyz"]
TGT = ["<pad>", "<unk>", "<sos>", "<eos>", *"ءأابةتثجحخدذرزسشصضطظعغفقكلمنهوىي"]
WORDS = ["ahlan", "3alaykom", "7abibi", "sh", "m9a7a", "2ja", "tayren"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def tiny(**kw) -> TranslitRNN:
    torch.manual_seed(0)
    return create_model("translit_rnn", {"src_vocab": SRC, "tgt_vocab": TGT},
                        **{"emb": 8, "hidden": 16, "dropout": 0.0, **kw}).eval()


def small_config(**model):
    return load_config({"name": "t", "model": {"name": "translit_rnn", "emb": 16, "hidden": 32, **model},
                        "data": {"name": "arabizi", "valid": None, "val_size": 60, "limit": 240,
                                 "word_list": "wordfreq", "bucket": 4},  # the default config buckets too
                        "train": {"epochs": 2, "batch_size": 32, "log_every": 1, "seed": 1, "device": "cpu",
                                  "optimizer": {"name": "adam", "lr": 3e-3}, "eval_batch_size": 4096,
                                  "best_metric": "val/word_err"}})


# ---- Midterm Q4: the shrinking beam on a hand-made table ------------------------------------------------------------
DEEP, LEARN = 4, 5  # tokens after the four specials
# log p(next | prefix). The exam's figure gives the numbers on the search path; the others are filled in so
# that no other path enters the beam. Checked by hand:
#   t=1  deep -0.6, learn -0.8                              keep both
#   t=2  deep deep -0.65, learn learn -0.91, learn <eos> -3.3, deep <eos> -3.59, learn deep -3.9   keep 2 (none ends)
#   t=3  deep deep <eos> -0.87 (completes), learn learn learn -1.03; then learn learn deep -2.91,
#        deep deep learn -2.26 ... the width drops to 1
#   t=4  learn learn learn <eos> -1.31 (completes), learn learn learn deep -2.41
# (the transcript writes "learn learn deep <eos>" for the second: its search path is learn learn learn.)
TABLE = {
    (): {DEEP: -0.6, LEARN: -0.8, EOS_ID: -3.0},
    (DEEP,): {DEEP: -0.05, LEARN: -4.0, EOS_ID: -2.99},
    (LEARN,): {DEEP: -3.1, LEARN: -0.11, EOS_ID: -2.5},
    (DEEP, DEEP): {DEEP: -3.0, LEARN: -1.61, EOS_ID: -0.22},
    (LEARN, LEARN): {DEEP: -2.0, LEARN: -0.12, EOS_ID: -2.3},
    (LEARN, LEARN, LEARN): {DEEP: -1.38, LEARN: -2.5, EOS_ID: -0.28},
}


def table_step(tables):
    """A step function reading item i's next-token log-probabilities from tables[i] by prefix; the state is
    (item ids, prefix so far), which the beam reorders."""
    def step(prev, state):
        item, prefix = state
        prefix = torch.cat([prefix, prev[:, None]], 1)  # <sos>, then the tokens chosen so far
        logp = torch.full((len(prev), 6), -1e9)
        for r in range(len(prev)):
            key = tuple(t for t in prefix[r, 1:].tolist())
            for tok, lp in tables[int(item[r])].get(key, {}).items():
                logp[r, tok] = lp
        return logp, (item, prefix)
    return step


def run_table(tables, k=2, length_norm=0.0):
    n = len(tables)
    state = (torch.arange(n).repeat_interleave(k), torch.zeros(n * k, 0, dtype=torch.long))
    return beam_search(table_step(tables), state, n, k, max_len=6, sos=SOS_ID, eos=EOS_ID, length_norm=length_norm)


def completed(out, i):
    return [(tuple(t for t in row.tolist() if t != PAD_ID), round(float(s), 6))
            for row, s in zip(out["tokens"][i], out["log_probs"][i])]


def test_shrinking_beam_reproduces_the_midterm_example():
    out = run_table([TABLE])
    assert completed(out, 0) == [((DEEP, DEEP, EOS_ID), -0.87), ((LEARN, LEARN, LEARN, EOS_ID), -1.31)]
    assert out["lengths"][0].tolist() == [3, 4]
    # -0.6 - 0.05 - 0.22 and -0.8 - 0.11 - 0.12 - 0.28, added by hand
    assert math.isclose(float(out["log_probs"][0, 0]), -0.6 - 0.05 - 0.22, abs_tol=1e-6)
    assert math.isclose(float(out["log_probs"][0, 1]), -0.8 - 0.11 - 0.12 - 0.28, abs_tol=1e-6)


def test_beam_items_are_independent_and_length_normalisation_reranks():
    # item 1: t=1 keeps deep -0.1 and <eos> -1.0, which completes (width 1); t=2 deep deep -0.4 beats
    # deep <eos> -2.1; t=3 deep deep <eos> -1.2 completes. Raw, the empty word wins; per character (-1.2 / 3
    # = -0.4 against -1.0 / 1) the longer one does.
    other = {(): {DEEP: -0.1, EOS_ID: -1.0, LEARN: -3.0}, (DEEP,): {EOS_ID: -2.0, DEEP: -0.3, LEARN: -5.0},
             (DEEP, DEEP): {EOS_ID: -0.8, DEEP: -4.0, LEARN: -4.0}}
    out = run_table([TABLE, other])
    assert completed(out, 0) == [((DEEP, DEEP, EOS_ID), -0.87), ((LEARN, LEARN, LEARN, EOS_ID), -1.31)]
    assert completed(out, 1) == [((EOS_ID,), -1.0), ((DEEP, DEEP, EOS_ID), -1.2)]
    normed = run_table([other], length_norm=1.0)
    assert completed(normed, 0) == [((DEEP, DEEP, EOS_ID), -1.2), ((EOS_ID,), -1.0)]
    assert [round(float(s), 6) for s in normed["scores"][0]] == [-0.4, -1.0]


def test_a_hypothesis_the_shrunk_width_prunes_never_comes_back():
    """Width 3. By hand: t=1 keeps deep -0.1, <eos> -0.5 (completes: width 2), learn -1.0; t=2 ranks deep deep
    -0.2, learn <eos> -1.1 (completes: width 1), learn learn -1.2 (third: pruned for good); t=3 deep deep <eos>
    -2.2 completes. A beam that kept learn learn would return learn learn <eos> -1.3 instead."""
    table = {(): {DEEP: -0.1, EOS_ID: -0.5, LEARN: -1.0}, (DEEP,): {DEEP: -0.1, EOS_ID: -3.0, LEARN: -4.0},
             (LEARN,): {EOS_ID: -0.1, LEARN: -0.2, DEEP: -5.0}, (DEEP, DEEP): {EOS_ID: -2.0, DEEP: -3.0, LEARN: -3.0},
             (LEARN, LEARN): {EOS_ID: -0.1, DEEP: -5.0, LEARN: -5.0}}
    out = run_table([table], k=3)
    assert completed(out, 0) == [((EOS_ID,), -0.5), ((LEARN, EOS_ID), -1.1), ((DEEP, DEEP, EOS_ID), -2.2)]


def test_beam_width_one_is_greedy():
    model = tiny()
    src, src_len = model.encode_words(WORDS)
    g = model.greedy(src, src_len)
    b = model.beam_decode(src, src_len, k=1)
    width = max(g["tokens"].shape[1], b["tokens"].shape[2])

    def pad(x):
        return torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=PAD_ID)
    assert torch.equal(pad(g["tokens"]), pad(b["tokens"][:, 0]))
    assert torch.allclose(g["log_probs"], b["log_probs"][:, 0], atol=1e-5)


def test_beam_n_best_lists_are_sorted_and_distinct():
    model = tiny()
    out = model.transliterate(WORDS, beam=4, nbest=4)
    for cands in out:
        assert len(cands) == 4
        scores = [s for _, s in cands]
        assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    for cands in model.transliterate(WORDS, beam=12, nbest=12):  # untrained: <eos> is as likely as a letter
        assert len(cands) == 12 and all(text for text, _ in cands)  # yet no word is empty
    words = ["".join(random.Random(i).choices("abdhkmst37", k=3)) for i in range(300)]  # distinct words
    for temperature in (0.0, 50.0):  # hot sampling: every token as likely as any other
        assert all(c[0][0] for c in model.transliterate(words, temperature=temperature))
    src, src_len = model.encode_words(WORDS)
    tokens = model.beam_decode(src, src_len, k=4)["tokens"]
    for rows in tokens:  # the k completed hypotheses of a word are different sequences
        assert len({tuple(r.tolist()) for r in rows}) == 4


def test_line_n_best_is_the_best_of_every_combination_of_word_candidates():
    rng = random.Random(0)
    for n in (1, 3, 5):
        slots = [[(f"{i}{c}", rng.uniform(-9, 0)) for c in "abcd"[:rng.randint(1, 4)]] for i in range(4)]
        slots = [sorted(slot, key=lambda c: -c[1]) for slot in slots]
        every = sorted(((" ".join(t for t, _ in way), sum(s for _, s in way)) for way in itertools.product(*slots)),
                       key=lambda w: -w[1])
        got = best_combinations(slots, n, " ")
        assert [t for t, _ in got] == [t for t, _ in every[:n]]
        assert [s for _, s in got] == pytest.approx([s for _, s in every[:n]])
    # a slot's third candidate counts: 'c' + 'x' is the third best line
    assert best_combinations([[("a", -1.0), ("b", -2.0), ("c", -3.0)], [("x", 0.0)]], 3) == [
        ("ax", -1.0), ("bx", -2.0), ("cx", -3.0)]
    assert best_combinations([], 3) == [("", 0.0)]  # a blank line
    assert best_combinations([[("x", -1.0)]] * 100_000, 1) == [("x" * 100_000, -100_000.0)]  # no deep recursion


def test_ensemble_averages_log_probabilities_and_the_lm_rescores_the_beam():
    model = tiny(ensemble=2, lm_hidden=8, lm_weight=0.5)
    src, src_len = model.encode_words(WORDS)
    memories, states = model._start(src, src_len)
    prev = torch.full((len(WORDS),), SOS_ID)
    logp, _ = model._step(memories)(prev, states)
    each = [m.step(prev, st, mem)[0].log_softmax(-1) for m, st, mem in zip(model.members, states, memories)]
    letters = slice(4, None)  # after <sos>: every letter may come, no special token (ids 0-3)
    assert not torch.allclose(each[0], each[1])
    assert torch.allclose(logp[:, letters], (each[0] + each[1])[:, letters] / 2)
    assert (logp[:, :4] == float("-inf")).all()
    out = model.beam_decode(src, src_len, k=3)
    b, k, length = out["tokens"].shape
    lm = model.lm.log_prob(out["tokens"].view(b * k, length)).view(b, k)
    assert torch.allclose(out["scores"], out["log_probs"] + 0.5 * lm, atol=1e-5)
    assert (out["scores"].diff(dim=1) <= 1e-6).all()  # ranked by the rescored value
    tgt = out["tokens"][:, 0]
    terms = model.train().training_step((src, src_len, tgt, (tgt != PAD_ID).sum(1)))
    assert torch.allclose(terms["loss"], terms["nll"] + terms["lm_nll"])


@pytest.mark.parametrize("ensemble", [1, 2])
def test_right_to_left_members_rescore_the_n_best(ensemble):
    tgt = torch.tensor([[5, 6, 7, EOS_ID, PAD_ID], [8, EOS_ID, PAD_ID, PAD_ID, PAD_ID], [9, 10, 11, 12, EOS_ID]])
    assert reverse_words(tgt, torch.tensor([4, 2, 5])).tolist() == [
        [7, 6, 5, EOS_ID, PAD_ID], [8, EOS_ID, PAD_ID, PAD_ID, PAD_ID], [12, 11, 10, 9, EOS_ID]]
    model = tiny(ensemble=ensemble, r2l=1)
    src, src_len = model.encode_words(WORDS)
    out = model.beam_decode(src, src_len, k=3)
    tokens = out["tokens"]
    b, k, length = tokens.shape
    flat = tokens.view(b * k, length)
    rows = torch.arange(b).repeat_interleave(k)
    rev = reverse_words(flat, (flat != PAD_ID).sum(1))
    logits = model.r2l[0].teacher_forced(src[rows], src_len[rows], rev, 1.0).log_softmax(-1)
    r2l = (logits.gather(2, rev[..., None])[..., 0] * (rev != PAD_ID)).sum(1).view(b, k)
    # every member's log p(word) averaged: the left-to-right ensemble's counts once per member
    assert torch.allclose(out["scores"], (ensemble * out["log_probs"] + r2l) / (ensemble + 1), atol=1e-5)
    tgt = tokens[:, 0]
    tgt_len = (tgt != PAD_ID).sum(1)
    terms = model.train().training_step((src, src_len, tgt, tgt_len))
    rev = reverse_words(tgt, tgt_len)  # the right-to-left member learns the word backwards
    each = [token_nll(m.teacher_forced(src, src_len, tgt, 1.0), tgt) for m in model.members] + [
        token_nll(model.r2l[0].teacher_forced(src, src_len, rev, 1.0), rev)]
    assert torch.allclose(terms["loss"], torch.stack(each).mean())


def test_channel_members_score_the_source_given_each_candidate():
    """Noisy channel: members trained Arabic -> Arabizi add weight x log p(source | candidate) to the n-best."""
    assert append_eos(torch.tensor([[5, 6, 0], [7, 0, 0]]), torch.tensor([2, 1])).tolist() == [
        [5, 6, EOS_ID, PAD_ID], [7, EOS_ID, PAD_ID, PAD_ID]]
    model = tiny(channel=2)
    src, src_len = model.encode_words(WORDS)
    base = model.beam_decode(src, src_len, k=3)  # channel_weight 0 (the default): translation scores only
    assert torch.allclose(base["scores"], base["log_probs"])
    out = model.beam_decode(src, src_len, k=3, channel_weight=0.7)
    tokens = out["tokens"]
    b, k, length = tokens.shape
    flat = tokens.view(b * k, length)
    latin = append_eos(src, src_len).repeat_interleave(k, 0)  # each word's source, once per candidate
    n_arabic = ((flat != PAD_ID) & (flat != EOS_ID)).sum(1).clamp(min=1)
    by_hand = []
    for m in model.channel:  # the candidate's characters in, the source's characters (then <eos>) out
        logits = m.teacher_forced(flat, n_arabic, latin, 1.0).log_softmax(-1)
        by_hand.append((logits.gather(2, latin[..., None])[..., 0] * (latin != PAD_ID)).sum(1).view(b, k))
    channel = (by_hand[0] + by_hand[1]) / 2
    assert torch.allclose(out["scores"], out["log_probs"] + 0.7 * channel, atol=1e-4)
    assert (out["scores"].diff(dim=1) <= 1e-6).all()  # ranked by the rescored value
    model.channel_weight = 100.0  # the channel alone decides: the best candidate explains the source best
    ranked = model.beam_decode(src, src_len, k=3)
    chan = (ranked["scores"] - ranked["log_probs"]) / 100.0
    assert (chan[:, :1] >= chan - 1e-3).all()
    tgt = tokens[:, 0]
    batch = (src, src_len, tgt, (tgt != PAD_ID).sum(1))
    val = model.validation_step(batch)  # the channel's own loss is on the validation curves
    model.train()
    terms = model.training_step(batch)  # every member's token cross-entropy, channel members too, averaged
    assert torch.allclose(terms["loss"], (val["loss"] + 2 * val["channel_nll"]) / 3, atol=1e-5)
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.channel.parameters() if p.requires_grad)
    for bad in ({"channel_weight": 0.5}, {"channel": 1, "channel_weight": -1.0}, {"channel": 17}):
        with pytest.raises(ZooError, match="channel"):
            tiny(**bad)


@pytest.mark.parametrize("key", ["lexicon_weight", "word_weight"])
def test_word_evidence_lets_a_known_word_overtake_a_slightly_more_probable_one(key):
    """The training-target bonus and the word list's Zipf frequency (x 2 here) rerank the n-best."""
    model = tiny()
    src, src_len = model.encode_words(WORDS)
    base = model.beam_decode(src, src_len, k=3)
    words = [[model.decode_tokens(t) for t in item] for item in base["tokens"]]
    gaps = base["scores"][:, 0] - base["scores"][:, 1]
    i = next(i for i in gaps.argsort().tolist() if words[i][0] != words[i][1] and words[i][1])
    first, second, gap = words[i][0], words[i][1], float(gaps[i])
    model.target_lexicon, model.word_zipf = frozenset({second}), {second: 2.0, "ثثث": 7.0}
    same = model.beam_decode(src, src_len, k=3)  # weights 0 (the default): the ranking is untouched
    assert all(torch.equal(same[k], base[k]) for k in ("tokens", "log_probs", "scores"))
    weight = (gap + 0.05) / (2.0 if key == "word_weight" else 1.0)
    out = model.beam_decode(src, src_len, k=3, **{key: weight})
    assert [model.decode_tokens(t) for t in out["tokens"][i][:2]] == [second, first]
    assert float(out["scores"][i, 0]) == pytest.approx(float(base["scores"][i, 1]) + gap + 0.05, abs=1e-5)
    setattr(model, key, weight)  # the configured weight is what transliterate uses
    assert model.transliterate([WORDS[i]], beam=3)[0][0][0] == second
    for bad in (-0.1, 1e6, float("nan")):
        with pytest.raises(ZooError, match=key):
            tiny(**{key: bad})


def test_length_normalisation_divides_the_models_score_before_word_evidence_is_added():
    model = tiny()
    src, src_len = model.encode_words(WORDS)
    out = model.beam_decode(src, src_len, k=3, length_norm=1.0)
    length = (out["tokens"] != PAD_ID).sum(-1).float()  # characters and <eos>, as in beam_search
    assert torch.allclose(out["scores"], out["log_probs"] / length, atol=1e-6)
    assert (out["scores"].diff(dim=1) <= 1e-6).all()
    word = model.decode_tokens(out["tokens"][0, 1])
    model.target_lexicon = frozenset({word})
    bonus = model.beam_decode(src, src_len, k=3, length_norm=1.0, lexicon_weight=0.5)
    length = (bonus["tokens"] != PAD_ID).sum(-1).float()
    known = torch.tensor([[float(model.decode_tokens(t) == word) for t in item] for item in bonus["tokens"]])
    assert known.sum() >= 1  # a word's bonus is the same whatever its length
    assert torch.allclose(bonus["scores"], bonus["log_probs"] / length + 0.5 * known, atol=1e-6)


def test_losses_and_character_accuracy_count_real_target_tokens_only():
    logits = torch.zeros(1, 3, len(TGT))
    logits[0, 2, PAD_ID] = 20.0  # a confident guess where the target is padding must not count
    # uniform over the 36 tokens at the two real positions: log 36 each
    assert float(token_nll(logits, torch.tensor([[5, EOS_ID, PAD_ID]]))) == pytest.approx(math.log(len(TGT)))
    model = tiny()
    src, src_len = model.encode_words(WORDS)
    tgt = torch.nn.functional.pad(model.greedy(src, src_len)["tokens"], (0, 2), value=PAD_ID)
    val = model.validation_step((src, src_len, tgt, (tgt != PAD_ID).sum(1)))
    assert float(val["word_acc"]) == 1.0  # fed its own greedy output, it decodes the same words
    # teacher-forced, it predicts the same tokens, except where greedy decoding forbids one (<eos> first, <unk>):
    # the share is over real target tokens, the two padding columns are no tokens
    guess = model.members[0].teacher_forced(src, src_len, tgt, 1.0).argmax(2)
    real = tgt != PAD_ID
    assert float(val["char_acc"]) == pytest.approx(float(((guess == tgt) & real).sum() / real.sum()))
    assert float(val["char_acc"]) > 0.8 and not (guess == tgt)[~real].all()


def test_translate_keeps_punctuation_and_passes_other_scripts_through():
    """$ and ' are letters of Arabizi; sentence punctuation is not, even where malformed training lines put it in
    the source vocabulary (the corpus holds ``2017-03-07 00:00:00`` and ``shater.``)."""
    torch.manual_seed(0)
    model = create_model("translit_rnn", {"src_vocab": [*SRC, "-", ".", ":"], "tgt_vocab": TGT},
                         emb=8, hidden=16, dropout=0.0).eval()

    def best(text):
        return [cands[0][0] for _, cands in model.translate([text], beam=2)[0]]
    ahlan, kifak, shukran = best("ahlan kifak $ukran")
    assert "$" not in shukran and shukran == best("$ukran")[0] != best("ukran")[0]
    assert best("ahlan. kifak: (ahlan) \"kifak\"?") == [ahlan + ".", kifak + ":", f"({ahlan})", f'"{kifak}"?']
    assert best("ahlan-kifak ahlan,kifak 2024-ahlan") == [f"{ahlan}-{kifak}", f"{ahlan},{kifak}", f"2024-{ahlan}"]
    assert best("مرحبا مرحبا123 😀 2024 !!") == ["مرحبا", "مرحبا123", "😀", "2024", "!!"]  # nothing to transliterate
    assert best("3'ala")[0] != best("3ala")[0] and "'" not in best("3'ala")[0]
    # invisible marks (as web text and a file's byte-order mark bring them) neither cut a word nor reach the model,
    # as the data module drops them from training pairs; around a word and in text passed through, they stay
    assert best("ah\u200blan \ufeffkifak\u200f") == [ahlan, f"\ufeff{kifak}\u200f"]
    assert best("\u200b 2024\u200e") == ["\u200b", "2024\u200e"]
    assert best("ا\u200cهلا") == ["ا\u200cهلا"]
    assert best("\u200b'ahlan'\u200f '3ala\u200e'") == [f"\u200b'{ahlan}'\u200f", f"'{best('3ala')[0]}\u200e'"]
    assert best("'ahlan' ahlan'. '$ukran'") == [f"'{ahlan}'", f"{ahlan}'.", f"'{shukran}'"]  # quotes, not 3' 9' 6'
    gh = best("bal3'")[0]  # the ' after 3 is a letter (3' غ): transliterated, not kept
    assert "'" not in gh and gh != best("bal3")[0] and best("'bal3''")[0] == f"'{gh}'"
    one, = model.translate(["ahlan."], beam=3, nbest=3)[0]
    assert [c for c, _ in one[1]] == [c + "." for c, _ in model.translate(["ahlan"], beam=3, nbest=3)[0][0][1]]
    (_, pair), = model.translate(["ahlan,kifak"], beam=3, nbest=3)[0]  # two words in a token: combined n-best
    (_, a), (_, k) = model.translate(["ahlan kifak"], beam=3, nbest=3)[0]
    assert pair[0] == (f"{a[0][0]},{k[0][0]}", pytest.approx(a[0][1] + k[0][1])) and len(pair) == 3
    assert pair[1][1] == pytest.approx(max(a[0][1] + k[1][1], a[1][1] + k[0][1]))
    for token in ("ahlan-kifak", "((3ala))", "a.b.c", "مرحبا123", "'9'ba7'", "''", "3''", "ah\u200blan"):
        assert "".join(t for t, _ in model.split_token(token)) == token


def test_sampling_is_seeded_and_cold_sampling_is_greedy():
    model = tiny()
    src, src_len = model.encode_words(WORDS)

    def draw(t, seed):
        return model.greedy(src, src_len, temperature=t, generator=torch.Generator().manual_seed(seed))["tokens"]
    assert torch.equal(draw(1.0, 5), draw(1.0, 5)) and not torch.equal(draw(2.0, 5), draw(2.0, 6))
    assert torch.equal(draw(1e-4, 0), model.greedy(src, src_len)["tokens"])


# ---- Midterm Q5: attention on a linear RNN -------------------------------------------------------------------------
def test_attention_replays_the_midterm_linear_rnn():
    W_h = torch.tensor([[-1.0, 2.0], [0.0, 1.0]])
    W_u = torch.tensor([0.0, 1.0])
    W_K = torch.tensor([[2.0, -1.0], [-1.0, 1.0]])
    W_V = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    W_Q = torch.tensor([[3.0, 1.0], [4.0, 2.0]])
    h, states = torch.zeros(2), []
    for u in (1.0, 2.0, -1.0):
        h = W_h @ h + W_u * u
        states.append(h)
    H = torch.stack(states)  # [3, 2]
    h_out = W_h @ H[-1]
    assert H.tolist() == [[0, 1], [2, 3], [4, 2]] and h_out.tolist() == [0, 2]
    att = Attention("dot", 2, 2, 2)
    with torch.no_grad():
        att.key.weight.copy_(W_K)
    keys = att.keys(H[None])[0]
    assert keys.tolist() == [[-1, 1], [1, 1], [6, -2]]  # k3 = W_K h3 = (8 - 2, -4 + 2); the transcript's (6, -1) slips
    values = H @ W_V.T
    assert values.tolist() == [[0, 1], [2, 1], [4, -2]]
    q = (W_Q @ h_out)[None, None]
    assert q.flatten().tolist() == [2, 4]
    assert att.scores(q, keys[None]).flatten().tolist() == [2, 6, 4]
    context, weights = att(q, keys[None], values[None], torch.ones(1, 3, dtype=torch.bool), hard=True)
    assert weights.flatten().tolist() == [0, 1, 0] and context.flatten().tolist() == [2, 1]
    _, w = att(q, keys[None], values[None], torch.ones(1, 3, dtype=torch.bool))
    assert math.isclose(float(w.detach().sum()), 1.0, rel_tol=1e-6) and int(w.argmax()) == 1


@pytest.mark.parametrize("kind,cell", [("additive", "gru"), ("dot", "lstm")])
def test_attention_sums_to_one_and_padding_never_changes_a_word(kind, cell):
    model = tiny(attention=kind, cell=cell, context_rnn=cell == "lstm")
    alone = [model.greedy(*model.encode_words([w]), attention=True) for w in WORDS]
    src, src_len = model.encode_words(WORDS)
    src = torch.nn.functional.pad(src, (0, 5), value=PAD_ID)  # extra padding on every word
    batch = model.greedy(src, src_len, attention=True)
    for i, (w, one) in enumerate(zip(WORDS, alone)):
        n = one["tokens"].shape[1]
        assert torch.equal(batch["tokens"][i, :n], one["tokens"][0])
        assert torch.allclose(batch["log_probs"][i], one["log_probs"][0], atol=1e-5)
        a = batch["attention"][i, :n]
        assert torch.allclose(a.sum(1), torch.ones(n), atol=1e-5)  # over the real positions only...
        assert float(a[:, len(w):].abs().max()) == 0.0  # ...padding gets exactly nothing
        assert torch.allclose(a[:, :len(w)], one["attention"][0, :n], atol=1e-5)
    logits_alone = model.members[0].teacher_forced(*model.encode_words(["ahlan"]), torch.tensor([[7, 8, 3]]), 1.0)
    logits_pad = model.members[0].teacher_forced(*model.encode_words(["ahlan", "3alaykomwasahlan"]),
                                                 torch.tensor([[7, 8, 3], [7, 8, 3]]), 1.0)
    assert torch.allclose(logits_alone[0], logits_pad[0], atol=1e-5)


def test_teacher_forcing_below_one_uses_the_models_own_outputs():
    model = tiny(teacher_forcing=0.0).train()
    src, src_len = model.encode_words(["ahlan", "7abibi"])
    tgt = torch.tensor([[10, 12, 3], [9, 11, 3]])
    member = model.members[0]
    free = member.teacher_forced(src, src_len, tgt, 0.0)
    assert torch.allclose(free[:, 0], member.teacher_forced(src, src_len, tgt, 1.0)[:, 0])  # <sos> either way
    own = tgt.clone()
    own[:, 0] = free[:, 0].argmax(1)  # ratio 0: step 2 is fed the model's own first character
    assert torch.allclose(free[:, 1], member.teacher_forced(src, src_len, own, 1.0)[:, 1], atol=1e-6)
    other = own.clone()
    other[:, 0] = (own[:, 0] - 4 + 1) % (len(TGT) - 4) + 4  # any other first character changes step 2
    assert not torch.allclose(free[:, 1], member.teacher_forced(src, src_len, other, 1.0)[:, 1])


# ---- the corpus reader -----------------------------------------------------------------------------------------------
def test_reader_reports_malformed_lines_and_normalises(tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text("arabizi\tarabic\nAHLAN\tاهلا\nbroken line\n\n7abibi\tحبيبي\textra\nka\u0301\tك\n", encoding="utf-8")
    said = []
    pairs = read_pairs(f, log=said.append)
    assert pairs == [("ahlan", "اهلا"), ("ká", "ك")] and pairs[1][0] == "k\u00e1"  # lowercased, NFC
    assert len(said) == 1 and "skipped 2 malformed" in said[0] and f"{f}:3" in said[0] and f"{f}:5" in said[0]
    csv = tmp_path / "pairs.csv"
    csv.write_text("3ala,على\n", encoding="utf-8")
    assert read_pairs(csv) == [("3ala", "على")]


def test_reader_takes_quoted_csv_utf16_and_skips_huge_lines(tmp_path):
    """What spreadsheets and Windows editors save reads as the same pairs; a huge line is one malformed line."""
    want = [("3ala", "على"), ("ahlan", "اهلا")]
    rows = [("arabizi", "arabic"), *want]
    quoted = tmp_path / "q.csv"
    quoted.write_text("".join(f'"{s}","{t}"\r\n' for s, t in rows), encoding="utf-8")
    assert read_pairs(quoted) == want  # no quotes kept, the quoted header skipped
    wide = tmp_path / "w.tsv"
    wide.write_text("".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-16")  # with its byte-order mark
    assert read_pairs(wide) == want
    huge = tmp_path / "h.tsv"
    huge.write_text("3ala\tعلى\n" + "a" * 200_000 + "\tب\nahlan\tاهلا\n", encoding="utf-8")
    said = []
    assert read_pairs(huge, log=said.append) == want and f"{huge}:2" in said[0]
    named = tmp_path / "n.csv"  # a header of other names is no word pair either
    named.write_text("source,target\n" + "".join(f"{s},{t}\n" for s, t in want), encoding="utf-8")
    assert read_pairs(named) == want
    plain = tmp_path / "p.csv"  # but a first pair in the same script as the others stays
    plain.write_text("source,target\nlatin,words\n", encoding="utf-8")
    assert read_pairs(plain) == [("source", "target"), ("latin", "words")]
    latin = tmp_path / "l.tsv"
    latin.write_bytes("café\tx\n".encode("latin-1"))
    with pytest.raises(ZooError, match="is not UTF-8 text.*save it as UTF-8"):
        read_pairs(latin)


def test_reader_refuses_or_cleans_what_text_from_elsewhere_carries(tmp_path):
    """Files as they come from other tools: each reads as the same pairs or is refused in one line."""
    want = [("3ala", "على"), ("ahlan", "اهلا")]

    def read(name, text, encoding="utf-8"):
        (tmp_path / name).write_bytes(text.encode(encoding))
        said = []
        return read_pairs(tmp_path / name, log=said.append), said

    body = "".join(f"{s}\t{t}\n" for s, t in want)
    for name, encoding in (("le.tsv", "utf-16-le"), ("be.tsv", "utf-16-be")):  # UTF-16 without its byte-order mark
        with pytest.raises(ZooError, match="NUL characters.*UTF-16 without a byte-order mark"):
            read(name, body, encoding)
    marks = "3ala\u200b\t\u200fعلى\nah\u200dlan\tا\u200cهلا\n"  # zero-width marks and RLM, as web text has them
    assert read("marks.tsv", marks)[0] == want
    quoted = '"arabizi","arabic"\n"tay\tren",طايرين\n"3ala","على"\nahlan,اهلا\n'  # a tab inside quotes: still CSV
    pairs, said = read("tab.csv", quoted)
    assert pairs == want and f"{tmp_path / 'tab.csv'}:2" in said[0]  # that line alone is malformed
    pairs, said = read("ff.tsv", "3ala\tعلى\x0c\n2ja\u2028x\tاجا\nahlan\tاهلا\n")  # not line ends: U+2028, form feed
    assert pairs == want and f"{tmp_path / 'ff.tsv'}:2" in said[0] and ":3" not in said[0]
    with pytest.raises(ZooError, match="holds no word pairs"):
        read("header.csv", "latin,arabic\n")  # a header alone, whatever its names
    with pytest.raises(ZooError, match="Arabic script in its first column: are the columns swapped"):
        read("swapped.tsv", "arabic\tarabizi\n" + "".join(f"{t}\t{s}\n" for s, t in want))


def test_reader_composes_references_and_bounds_word_length(tmp_path):
    f = tmp_path / "pairs.tsv"  # alef + combining hamza above: U+0623 once composed, as predictions are
    f.write_text("2a\t\u0627\u0654\n" + "a" * 100 + "\tب\n" + "b" * 101 + "\tب\n", encoding="utf-8")
    said = []
    assert read_pairs(f, log=said.append) == [("2a", "\u0623"), ("a" * 100, "ب")]  # 100 letters: the limit
    assert f"{f}:3" in said[0]


def test_missing_file_is_one_line_naming_path_and_format(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ZOO_ARABIZI", raising=False)  # it wins over data.root: the corpus would be found and trained
    with pytest.raises(ZooError, match=r"no word-pair file at '.*nope\.tsv'.*arabizi<TAB>arabic"):
        build_data("arabizi", root=str(tmp_path), train="nope.tsv")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: translit_rnn}}\ndata: {{name: arabizi, root: {tmp_path}}}\n")
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.tsv" in err


def test_errors_blame_a_stale_zoo_arabizi_and_say_how_to_fix_val_size(tmp_path, monkeypatch):
    (tmp_path / "mine.tsv").write_text("".join(f"w{i}a\tو{i}\n" for i in range(20)), encoding="utf-8")
    monkeypatch.setenv("ZOO_ARABIZI", str(tmp_path / "elsewhere"))  # set once for the corpus, forgotten since
    with pytest.raises(ZooError, match=r"ZOO_ARABIZI=.*elsewhere is set and wins over data.root"):
        build_data("arabizi", root=str(tmp_path), train="mine.tsv", valid=None)
    monkeypatch.delenv("ZOO_ARABIZI")
    with pytest.raises(ZooError, match=r"leaves no training pairs out of 20 .*set data.val_size below 20"):
        build_data("arabizi", root=str(tmp_path), train="mine.tsv", valid=None, val_size=20)


def test_corpus_vocabularies_and_unknown_characters(tmp_path, monkeypatch, capsys):
    data = create_data("arabizi")
    assert data.size("train") == 15682 and data.size("val") == 1936
    src_vocab, tgt_vocab = data.info["src_vocab"], data.info["tgt_vocab"]
    assert src_vocab[:4] == ["<pad>", "<unk>", "<sos>", "<eos>"] and "3" in src_vocab and "ع" in tgt_vocab
    assert not {s for s, _ in data.texts("train")} & {s for s, _ in data.texts("val")}
    src, src_len, tgt, tgt_len = next(data.batches("val", 8))
    assert tgt[torch.arange(8), tgt_len - 1].eq(EOS_ID).all() and src.shape[1] == int(src_len.max())
    # valid: null carves the validation words from train by seed; ZOO_ARABIZI points at another folder
    (tmp_path / "train.tsv").write_text("arabizi\tarabic\n" + "".join(f"w{i}a\tو{i}\n" for i in range(50)),
                                        encoding="utf-8")
    monkeypatch.setenv("ZOO_ARABIZI", str(tmp_path))
    a = create_data("arabizi", valid=None, val_size=10, seed=3)
    b = create_data("arabizi", valid=None, val_size=10, seed=3)
    assert a.texts("val") == b.texts("val") and a.size("train") == 40
    assert a.texts("val") != create_data("arabizi", valid=None, val_size=10, seed=4).texts("val")
    model = create_model("translit_rnn", a.info, emb=8, hidden=8)
    assert model.encode_words(["wé"])[0].tolist() == [[a.info["src_vocab"].index("w"), UNK_ID]]
    assert len(model.transliterate(["wé", "ÿÿ"])) == 2  # unseen characters never crash
    capsys.readouterr()
    assert create_data("arabizi", valid="train.tsv").size("val") == 50  # allowed, but said: it measures memory
    assert "50 of the 50 validation pairs" in capsys.readouterr().err
    monkeypatch.delenv("ZOO_ARABIZI")
    create_data("arabizi")  # the corpus's own split shares no source word: nothing to say
    assert "warning" not in capsys.readouterr().err


def test_target_lexicon_holds_the_training_targets_only(tmp_path, monkeypatch):
    train = "arabizi\tarabic\n" + "".join(f"w{i}a\tو{i}\n" for i in range(60))
    (tmp_path / "train.tsv").write_text(train, encoding="utf-8")
    (tmp_path / "valid.tsv").write_text("zz\tزز\nw1a\tو1\n", encoding="utf-8")
    monkeypatch.setenv("ZOO_ARABIZI", str(tmp_path))
    data = create_data("arabizi", limit=40)  # the kept training pairs only
    assert data.info["target_lexicon"] == sorted(f"و{i}" for i in range(40)) and "زز" not in \
        data.info["target_lexicon"]
    carved = create_data("arabizi", valid=None, val_size=10, seed=2)  # validation words carved from train
    assert carved.info["target_lexicon"] == sorted({t for _, t in carved.texts("train")})
    assert len(carved.info["target_lexicon"]) == 50 and not {t for _, t in carved.texts("val")} & \
        set(carved.info["target_lexicon"])
    val = {s for s, _ in carved.texts("val")}  # the pairs left for training keep the file's order
    assert [s for s, _ in carved.texts("train")] == [f"w{i}a" for i in range(60) if f"w{i}a" not in val]
    parts = [x[:4] for x in carved.tensors("train")]
    words = [t for _, t in carved.texts("train")[:4]]  # validation loss is averaged per target token
    assert int(carved.collate("train", parts, None).num_items) == sum(len(w) + 1 for w in words)  # with <eos>
    model = create_model("translit_rnn", data.info, emb=8, hidden=8, lexicon_weight=1.0)
    assert model.target_lexicon == set(data.info["target_lexicon"])


def test_word_list_holds_wordfreq_arabic_in_the_training_alphabet(tmp_path, monkeypatch):
    import wordfreq

    (tmp_path / "train.tsv").write_text("arabizi\tarabic\nfi\tفي\nmin\tمن\n", encoding="utf-8")
    (tmp_path / "valid.tsv").write_text("3an\tعن\n", encoding="utf-8")
    monkeypatch.setenv("ZOO_ARABIZI", str(tmp_path))
    assert "word_frequencies" not in create_data("arabizi").info  # off by default
    data = create_data("arabizi", word_list="wordfreq")
    zipf = {w: z for z, words in data.info["word_frequencies"] for w in words.split()}
    # only words spelt with ف ي م ن survive; their Zipf values are wordfreq's own
    assert zipf and all(set(w) <= set("فيمن") for w in zipf)
    assert {"في", "من", "فيمن"} <= set(zipf) and "عن" not in zipf
    assert zipf["في"] == pytest.approx(wordfreq.zipf_frequency("في", "ar", wordlist="large"), abs=0.01)
    assert [z for z, _ in data.info["word_frequencies"]] == sorted((z for z, _ in data.info["word_frequencies"]),
                                                                  reverse=True)
    model = create_model("translit_rnn", data.info, emb=8, hidden=8, word_weight=1.0)
    assert model.word_zipf == zipf
    with pytest.raises(ZooError, match="word_list"):
        build_data(name="arabizi", word_list="nope")


def test_bucketed_batches_hold_words_sorted_by_source_then_target_length():
    data = create_data("arabizi", bucket=100)  # the default config's pools
    _, src_len, _, tgt_len = data.tensors("train")
    def real(order, lens):  # the share of real characters in the padded batches
        batches = order.split(64)
        return float(sum(lens[b].sum() for b in batches) / sum(lens[b].max() * len(b) for b in batches))

    order, plain = data.epoch_order(0, 0, 64), data.epoch_order(0, 0)
    assert real(order, src_len) / real(plain, src_len) > 1.5 and real(order, tgt_len) > real(plain, tgt_len)
    for b in order.split(64):  # (source, target) lengths in lexicographic order inside every batch
        key = src_len[b] * 100 + tgt_len[b]
        assert torch.equal(key, key.sort().values)
    batch = next(data.batches("train", 64, order=order))
    assert batch[0].shape[1] == int(src_len[order[:64]].max())  # collate trims to the batch's longest
    with pytest.raises(ZooError, match="data.bucket needs data.shuffle: true"):
        build_data("arabizi", bucket=4, shuffle=False)


# ---- training, checkpoints, the command line -------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("tl") / "run"
    trainer = fit(small_config(teacher_forcing=0.7, tf_decay=0.9), run)
    return trainer, run


def test_training_learns_and_logs_curves_table_and_attention(trained):
    trainer, run = trained
    first, last = trainer.metrics["epochs"][0], trainer.metrics["epochs"][-1]
    assert last["val/loss"] < first["val/loss"] and 0 <= last["val/word_acc"] <= 1
    assert last["train/teacher_forcing"] == pytest.approx(0.7 * 0.9 ** 2)
    table = (run / "samples" / "valid_words_epoch001.txt").read_text(encoding="utf-8")
    assert table.startswith("| source | reference | prediction | ok |") and table.count("\n") == 18
    assert (run / "samples" / "attention_epoch001.png").is_file()


def test_resume_is_exact_with_teacher_forcing_coin_flips(trained, tmp_path):
    trainer, _ = trained
    cfg = small_config(teacher_forcing=0.7, tf_decay=0.9)
    fit({**cfg, "train": {**cfg["train"], "max_steps": 9}}, tmp_path / "r")
    resumed = fit(cfg, tmp_path / "r", resume=True)
    assert resumed.metrics["epochs"][-1]["val/loss"] == trainer.metrics["epochs"][-1]["val/loss"]


def test_checkpoint_round_trip_translates_identically(trained):
    trainer, run = trained
    model, _, ck = load_run(run)
    assert ck["data_info"]["tgt_vocab"] == trainer.data.info["tgt_vocab"]
    lexicon = {t for _, t in trainer.data.texts("train")}
    assert ck["data_info"]["target_lexicon"] == sorted(lexicon) and model.target_lexicon == lexicon
    assert model.word_zipf == trainer.model.word_zipf and len(model.word_zipf) > 1000  # the word list travels
    assert {t for _, t in trainer.data.texts("val")} - lexicon  # validation-only words stay out
    words = ["ahlan", "3alaykom", "7abibi", "ma3a", "$ukran"]
    assert model.transliterate(words, beam=3, nbest=3) == trainer.model.transliterate(words, beam=3, nbest=3)
    by_two = model.transliterate(words, beam=3, nbest=3, batch_size=2)  # words of other lengths beside it
    assert [[c for c, _ in n] for n in by_two] == [[c for c, _ in n] for n in model.transliterate(words, 3, 3)]
    model.lexicon_weight = trainer.model.lexicon_weight = 2.0
    model.word_weight = trainer.model.word_weight = 1.0
    assert model.transliterate(words, beam=3, nbest=3) == trainer.model.transliterate(words, beam=3, nbest=3)


def test_translit_command_keeps_lines_aligned(trained, monkeypatch, capsys):
    _, run = trained
    text = "ahlan 3alaykom\n\n2024 !!\n7abibi, ok?\n" + "x" * 300 + "\nwé ÿ\n"

    def lines_out(*args, bom=b""):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bom + text.encode()), encoding="utf-8"))
        assert main(["translit", str(run), *args]) == 0
        return capsys.readouterr().out.split("\n")[:-1]
    out = lines_out()
    assert len(out) == 6 and out[1] == "" and out[2] == "2024 !!"
    assert lines_out(bom=b"\xef\xbb\xbf") == out  # a file saved with a byte-order mark: nothing of it in the output
    assert out[0].count(" ") == 1 and out[3].split(" ")[0].endswith(",") and out[3].endswith("?")
    # --nbest: still one line per input line, the line's candidates best first, the 1-best output leading them
    best, nbest = lines_out("--beam", "3"), lines_out("--beam", "3", "--nbest", "3")
    assert len(nbest) == 6 and nbest[1] == "" and nbest[2] == "2024 !!\t2024 !! (0.000)"
    assert len(nbest[0].split("\t")) == 4  # two words of 3 candidates each: the 3 best of the 9 pairs
    for line, top, source in zip(nbest, best, text.split("\n")):
        if source:
            fields = line.split("\t")
            scores = [float(f.rsplit(" (", 1)[1][:-1]) for f in fields[1:]]
            assert fields[0] == source and fields[1].rsplit(" (", 1)[0] == top
            assert scores == sorted(scores, reverse=True) and len(set(fields[1:])) == len(fields) - 1
    assert main(["translit", str(run), "ahlan", "--beam", "3", "--nbest", "3"]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert line[0] == "ahlan" and len(line) == 4 and all(c.endswith(")") for c in line[1:])
    assert main(["translit", str(run), "ahlan", "--nbest", "4", "--beam", "2"]) == 2


def test_eval_reports_accuracy_top5_cer_and_baselines(trained, tmp_path, capsys, monkeypatch):
    _, run = trained
    f = tmp_path / "words.tsv"
    f.write_text("arabizi\tarabic\n7mer\tحمير\nahleen\tاهلين\n3ala\tعلى\n", encoding="utf-8")
    assert main(["eval", str(run), "--json", "--data", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_words"] == 3 and 0 <= out["word_accuracy"] <= out["top5_accuracy"] <= 1 and out["cer"] >= 0
    assert out["baselines"]["rule_based"]["word_accuracy"] == pytest.approx(2 / 3)  # 7mer, ahleen by rule
    assert set(out["baselines"]["nearest_training_word"]) == {"word_accuracy", "cer"}
    export = tmp_path / "tl.safetensors"  # a shared file and a word list, without the corpus it was trained on
    assert main(["export", str(run), "-o", str(export)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("ZOO_ARABIZI", str(tmp_path / "no-corpus-here"))
    assert main(["eval", str(export), "--json", "--data", str(f), "--no-baselines"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["word_accuracy"] == out["word_accuracy"] and "baselines" not in alone
    assert main(["eval", str(export), "--json", "--data", str(f)]) == 2  # the nearest-word baseline needs it
    assert "ZOO_ARABIZI" in capsys.readouterr().err


def test_eval_counts_a_reference_in_the_top5_but_not_in_first_place(trained, tmp_path, capsys, monkeypatch):
    _, run = trained
    refs = {"7mer": "حمير", "ahleen": "اهلين"}
    f = tmp_path / "words.tsv"
    f.write_text("".join(f"{s}\t{t}\n" for s, t in refs.items()), encoding="utf-8")

    def transliterate(self, words, beam=1, nbest=1, **kw):  # a wrong spelling first, the reference second
        return [[("ب" + refs[w], -1.0), (refs[w], -2.0)][:nbest] for w in words]
    monkeypatch.setattr(TranslitRNN, "transliterate", transliterate)
    assert main(["eval", str(run), "--json", "--data", str(f), "--no-baselines"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["word_accuracy"] == 0.0 and out["top5_accuracy"] == 1.0
    assert out["cer"] == pytest.approx(2 / 9)  # one extra letter a word over 4 + 5 reference letters


def test_baselines_and_edit_distances():
    assert rule_based("7mer") == "حمير" and rule_based("3'ali") == "غالي" and rule_based("m9a7a") == "مصاحه"
    train = [("ahlan", "اهلا"), ("7abibi", "حبيبي"), ("ma3a", "معا")]
    assert nearest_words(["ahlen", "7abibti", "ma3"], train) == ["اهلا", "حبيبي", "معا"]
    g = torch.Generator().manual_seed(0)
    words = ["".join("abc"[i] for i in torch.randint(0, 3, (n,), generator=g)) for n in (1, 3, 4, 4, 6)]

    def codes(ws):
        return torch.tensor([[ord(c) for c in w] for w in ws])
    for a in words:
        for b in words:
            assert int(_edit_distance(codes([a]), codes([b]))[0, 0]) == levenshtein(a, b)
    assert levenshtein("kitten", "sitting") == 3
    assert scores(["ab", "x"], ["abc", "x"]) == {"word_accuracy": 0.5, "cer": 0.25}  # 1 edit / 4 reference letters


# ---- text handling, checked by hand on the untrained tiny() model --------------------------------------------------
def test_split_token_lowercases_before_looking_for_letters_and_cuts_at_unknown_symbols():
    model = tiny()
    # "AHLAN": no capital is in SRC, but A is alphanumeric (never punctuation) and its lower case a is a source
    # letter, so the run is a word to transliterate, not text to pass through
    assert model.split_token("AHLAN") == [("AHLAN", True)]
    # 😀 is not alphanumeric and not in the source vocabulary: punctuation that cuts the token
    assert model.split_token("ahlan😀") == [("ahlan", True), ("😀", False)]
    assert model.split_token("😀ahlan") == [("😀", False), ("ahlan", True)]
    # digits are word characters but no letters: 2024 alone passes through, 3 inside a word is a letter
    assert model.split_token("2024") == [("2024", False)] and model.split_token("3ala") == [("3ala", True)]


def test_opening_and_closing_quotes_are_punctuation_even_when_training_sources_held_them():
    # a corpus line may hold « » “ ” (categories Pi/Pf): in the vocabulary, still never letters of a word
    torch.manual_seed(0)
    model = create_model("translit_rnn", {"src_vocab": [*SRC, "«", "»", "“", "”"], "tgt_vocab": TGT},
                         emb=8, hidden=16, dropout=0.0).eval()
    assert model.split_token("«ahlan»") == [("«", False), ("ahlan", True), ("»", False)]
    assert model.split_token("“3ala”") == [("“", False), ("3ala", True), ("”", False)]


def test_decode_tokens_skips_specials_and_stops_at_the_first_eos():
    model = tiny()
    # ids 4 and 5 are the first two real characters of TGT (ء and أ); <sos>, <unk>, <pad> are dropped, and
    # nothing after <eos> (id 3) is read
    row = torch.tensor([SOS_ID, 4, UNK_ID, 5, PAD_ID, EOS_ID, 4, 6])
    assert model.decode_tokens(row) == TGT[4] + TGT[5] == "ءأ"
    assert model.decode_tokens(torch.tensor([EOS_ID, 4])) == ""


def test_encode_words_reads_capitals_as_the_corpus_lower_case_spelling():
    model = tiny()
    # normalize_source lower-cases (the source vocabulary only has lower-case letters): AHLAN is ahlan, no <unk>
    src, src_len = model.encode_words(["AHLAN", "ahlan"])
    assert torch.equal(src[0], src[1]) and src_len.tolist() == [5, 5] and UNK_ID not in src[0].tolist()


def test_transliterate_reuses_the_callers_cache_and_restores_training_mode():
    model = tiny()
    # a planted entry is returned as it is: a cached word is never decoded again; new words are added
    cache = {"ahlan": [("X", -1.0)]}
    out = model.transliterate(["ahlan", "kifak", "ahlan"], cache=cache)
    assert out[0] == out[2] == [("X", -1.0)] and set(cache) == {"ahlan", "kifak"} and cache["kifak"] == out[1]
    assert model.translate(["ahlan, kifak"], cache=cache, beam=1)[0][0][1][0][0] == "X,"
    # sampling draws afresh on every call: the cache is not read (nor written)
    sampled = model.translate(["ahlan"], temperature=1.0, cache=cache)[0][0][1]
    assert sampled[0][0] != "X" and cache["ahlan"] == [("X", -1.0)]
    model.train()
    model.transliterate(["ahlan"])
    assert model.training  # decoding switches to eval mode and back
    model.eval()
    model.transliterate(["ahlan"])
    assert not model.training


def test_translate_nbest_without_a_beam_still_searches_and_refuses_zero():
    model = tiny()
    # nbest 3 with beam 1: the search widens to max(beam, nbest) = 3, so the same list as beam 3
    (_, wide), = model.translate(["ahlan"], beam=1, nbest=3)[0]
    assert len(wide) == 3 and wide == model.translate(["ahlan"], beam=3, nbest=3)[0][0][1]
    for bad in ({"nbest": 0}, {"beam": 0}):
        with pytest.raises(ZooError, match="--nbest"):
            model.translate(["ahlan"], **bad)


def test_a_word_longer_than_max_chunk_is_decoded_in_pieces_of_max_chunk():
    from zoo.models.translit import MAX_CHUNK

    model = tiny()
    head, tail = ("ahlan" * 10)[:MAX_CHUNK], "kifak"  # 40 + 5 characters: pieces cut at exactly 40
    (_, cands), = model.translate([head + tail], beam=1)[0]
    (h,), (t,) = model.transliterate([head, tail])
    assert cands == [(h[0] + t[0], pytest.approx(h[1] + t[1]))]


def fake_run(monkeypatch, model, name="translit_rnn"):
    """zoo translit/eval on ``model`` without training a run: load_run hands it back for any path."""
    cfg = {"model": {"name": name}, "data": {"name": "arabizi"}}
    monkeypatch.setattr("zoo.checkpoint.load_run", lambda run, device=None, which="last": (model, cfg, {}))


def test_translit_command_keeps_its_word_cache_across_blocks_of_lines(monkeypatch, capsys):
    model = tiny()
    calls = []
    decode = model.beam_decode
    monkeypatch.setattr(model, "beam_decode", lambda src, *a, **kw: calls.append(len(src)) or decode(src, *a, **kw))
    fake_run(monkeypatch, model)
    # 2001 lines: a block of 2000, then one of 1. "ahlan" is decoded once, in the first block; the second block
    # finds it in the cache the command keeps across blocks
    text = "ahlan\n" * 2001
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8"))
    assert main(["translit", "any-run"]) == 0
    out = capsys.readouterr().out.split("\n")[:-1]
    assert len(out) == 2001 and len(set(out)) == 1 and calls == [1]


def test_translit_command_refuses_a_model_that_cannot_translate(monkeypatch, capsys):
    fake_run(monkeypatch, torch.nn.Linear(1, 1), name="lenet")  # no translate method
    assert main(["translit", "any-run", "ahlan"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot translate" in err


def test_eval_refuses_options_the_model_cannot_use_even_when_zero_or_with_no_fid(monkeypatch, capsys):
    model = tiny()
    model.sample = lambda *a, **kw: None  # a model that samples: --evaluator would apply, but not with --no-fid
    fake_run(monkeypatch, model)
    for flags in (["--iw-samples", "0"], ["--evaluator", "runs/lenet", "--no-fid"]):
        assert main(["eval", "any-run", *flags]) == 2  # translit has no importance-weighted bound, even 0 of it
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flags[0] in err, (flags, err)

"""Decoding options of a trained transliteration run, measured on the validation words (or a file of pairs).

    python scripts/translit_options.py runs/translit [--data PATH]

Prints a Markdown table: word accuracy, top-5 accuracy and CER for the translation model alone (greedy, beam
widths, length normalisation, LM weights, fewer members, right-to-left rescoring), then the run's own decoding
with one setting changed at a time: beam widths (``--beams``), target-lexicon bonuses (``--lexicon-weights``;
the lexicon is the checkpoint's, i.e. the training targets; a run trained before the lexicon existed gets it
rebuilt from its data config's training pairs), word-list weights (``--word-weights``, with the run's
``data.word_list``), noisy-channel weights (``--channel-weights``, with the run's channel members), LM weights
and fewer members (translation, right-to-left, channel). Word accuracy is also given
on the two halves of the words (a seeded split): a weight chosen on one half can be read on the other.
Training-time options (ensemble, teacher forcing, cell, attention) need their own runs: see the README for those
commands.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from zoo.checkpoint import load_run
from zoo.data import create_data
from zoo.data.arabizi import normalize_target, read_pairs
from zoo.errors import ZooError, script_main
from zoo.models.translit import scores


def listed(cast, low):
    """An argparse ``type``: comma-separated finite numbers (``cast``), each at least ``low``."""
    def parse(text: str) -> list:
        try:
            values = [cast(w) for w in text.split(",") if w.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                             f"{'integers' if cast is int else 'numbers'}") from None
        if not all(math.isfinite(v) and v >= low for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least {low}")
        return values
    return parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default=None, help="TSV/CSV of pairs (default: the run's validation split)")
    ap.add_argument("--checkpoint", default="last", choices=("last", "best"))
    ap.add_argument("--lexicon-weights", type=listed(float, 0), default="0.5,1,1.5,2,3,5",
                    help="comma-separated lexicon_weight values swept on the run's decoding")
    ap.add_argument("--word-weights", type=listed(float, 0), default="0,0.4,0.8,1.2,1.6,2.4",
                    help="comma-separated word_weight values swept on the run's decoding (needs data.word_list)")
    ap.add_argument("--channel-weights", type=listed(float, 0), default="0,0.3,0.6,0.9",
                    help="comma-separated channel_weight values swept on the run's decoding (needs channel members)")
    ap.add_argument("--beams", type=listed(int, 1), default="",
                    help="comma-separated beam widths tried on the run's decoding, e.g. 20")
    ap.add_argument("--only-lexicon", action="store_true",
                    help="skip the decoding options of the translation model alone (beam, length_norm, LM, members)")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, cfg, _ = load_run(args.run, "cpu", which=args.checkpoint)
    if not callable(getattr(model, "beam_decode", None)):
        raise ZooError(f"'{args.run}' is a {cfg['model']['name']} run; this script measures transliterator runs "
                       "(zoo train configs/translit.yaml)")
    pairs = read_pairs(args.data) if args.data else create_data(**cfg["data"]).texts("val")
    sources, refs = [s for s, _ in pairs], [normalize_target(t) for _, t in pairs]
    if not model.target_lexicon:  # trained before the lexicon was data info: rebuild it from the training pairs
        model.target_lexicon = frozenset(create_data(**cfg["data"]).info["target_lexicon"])
    beams = args.beams
    sweeps = {key: getattr(args, key.replace("_weight", "_weights")) for key in ("lexicon_weight", "word_weight",
                                                                                  "channel_weight")}
    members, r2l, channel = list(model.members), list(model.r2l), list(model.channel)
    n_l, n_r, n_c = len(members), len(r2l), len(channel)
    # every setting: the run's own decoding with some of these keys changed
    config = {"beam": model.beam, "length_norm": model.length_norm, "lm_weight": model.lm_weight, "members": n_l,
              "r2l": n_r, "channel": n_c, "lexicon_weight": model.lexicon_weight, "word_weight": model.word_weight,
              "channel_weight": model.channel_weight}
    bare = {"length_norm": 0.0, "lm_weight": 0.0, "r2l": 0, "lexicon_weight": 0.0, "word_weight": 0.0,
            "channel_weight": 0.0}  # the translation model alone
    lm = [0.2, 0.5, 0.8] if model.lm is not None else []
    settings = [("greedy", {**bare, "beam": 1})] + [(f"beam {k}", {**bare, "beam": k}) for k in (2, 5, 10)]
    settings += [(f"beam 5, length_norm {a}", {**bare, "beam": 5, "length_norm": a}) for a in (0.5, 1.0)]
    settings += [(f"beam 5, lm_weight {w}", {**bare, "beam": 5, "lm_weight": w}) for w in lm]
    settings += [(f"{m} member(s), beam 5", {**bare, "beam": 5, "members": m}) for m in range(1, n_l)]
    if r2l:
        settings += [(f"beam 5, {n_r} right-to-left rescoring", {**bare, "beam": 5, "r2l": n_r})]
    if args.only_lexicon:
        settings = []
    settings += [("the run's decoding", {})] + [(f"beam {k}", {"beam": k}) for k in beams if k != config["beam"]]
    for key, values in sweeps.items():
        if key == "word_weight" and not model.word_zipf or key == "channel_weight" and not n_c:
            continue
        settings += [(f"{key} {w}", {key: w}) for w in values if w != config[key]]
    if model.lm is not None:
        settings += [(f"lm_weight {w}", {"lm_weight": w}) for w in [0.0, *lm] if w != config["lm_weight"]]
    settings += [(f"{m} + {r} members", {"members": m, "r2l": r})
                 for m, r in sorted({(1, min(1, n_r)), (min(2, n_l), min(1, n_r))} - {(n_l, n_r)})]
    settings += [(f"{c} channel member(s)", {"channel": c}) for c in range(1, n_c)]
    in_lex = sum(r in model.target_lexicon for r in refs) / len(refs)
    print(f"{args.run}: {len(pairs)} words; {n_l} left-to-right members, {n_r} right-to-left, {n_c} channel; "
          f"target lexicon {len(model.target_lexicon)} words, holding {in_lex:.1%} of the references; the run's "
          f"decoding: {config}\n")
    halves = torch.randperm(len(refs), generator=torch.Generator().manual_seed(0)) < len(refs) // 2
    print("| decoding | word accuracy | half A / half B | top-5 | CER | seconds |\n|---|---|---|---|---|---|")
    for name, changes in settings:
        d = {**config, **changes}
        for key in ("length_norm", "lm_weight", "lexicon_weight", "word_weight", "channel_weight"):
            setattr(model, key, d[key])
        model.members, model.r2l = torch.nn.ModuleList(members[:d["members"]]), torch.nn.ModuleList(r2l[:d["r2l"]])
        model.channel = torch.nn.ModuleList(channel[:d["channel"]])
        k = d["beam"]
        t0 = time.perf_counter()
        wide = model.transliterate(sources, beam=max(k, 5), nbest=5)  # top-5 always from a beam >= 5
        top1 = [c[0][0] for c in (wide if k >= 5 else model.transliterate(sources, beam=k, nbest=1))]
        dt = time.perf_counter() - t0
        s = scores(top1, refs)
        hit = torch.tensor([p == r for p, r in zip(top1, refs)], dtype=torch.float)
        top5 = sum(r in [c for c, _ in cands[:5]] for cands, r in zip(wide, refs)) / len(refs)
        print(f"| {name} | {s['word_accuracy']:.4f} | {hit[halves].mean():.4f} / {hit[~halves].mean():.4f} | "
              f"{top5:.4f} | {s['cer']:.4f} | {dt:.1f} |")


if __name__ == "__main__":
    script_main(main)

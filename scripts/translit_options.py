"""Decoding options of a trained transliteration run, measured on the validation words (or a file of pairs).

    python scripts/translit_options.py runs/translit [--data PATH]

Prints a Markdown table: word accuracy, top-5 accuracy and CER for greedy decoding, beam widths, length
normalisation, LM rescoring weights, fewer ensemble members, right-to-left rescoring (what the run has),
target-lexicon bonuses (``--lexicon-weights``; the lexicon is the checkpoint's, i.e. the training targets; a run
trained before the lexicon existed gets it rebuilt from its data config's training pairs) and word-list weights
(``--word-weights``, with the run's ``data.word_list``). Word accuracy is also given on the two halves of the words
(a seeded split): a weight chosen on one half can be read on the other. Training-time options (ensemble,
teacher forcing, cell, attention) need their own runs: see the README for those commands.
"""
from __future__ import annotations

import argparse
import time

import torch

from zoo.checkpoint import load_run
from zoo.data import create_data
from zoo.data.arabizi import normalize_target, read_pairs
from zoo.models.translit import scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default=None, help="TSV/CSV of pairs (default: the run's validation split)")
    ap.add_argument("--checkpoint", default="last")
    ap.add_argument("--lexicon-weights", default="0.5,1,1.5,2,3,5",
                    help="comma-separated lexicon_weight values swept on the full decoding (beam, LM, r2l)")
    ap.add_argument("--word-weights", default="0,0.4,0.8,1.2,1.6,2.4",
                    help="comma-separated word_weight values swept on the full decoding (needs data.word_list)")
    ap.add_argument("--only-lexicon", action="store_true", help="skip the decoding options before the lexicon's")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, cfg, _ = load_run(args.run, "cpu", which=args.checkpoint)
    pairs = read_pairs(args.data) if args.data else create_data(**cfg["data"]).texts("val")
    sources, refs = [s for s, _ in pairs], [normalize_target(t) for _, t in pairs]
    if not model.target_lexicon:  # trained before the lexicon was data info: rebuild it from the training pairs
        model.target_lexicon = frozenset(create_data(**cfg["data"]).info["target_lexicon"])
    lex_weights = [float(w) for w in args.lexicon_weights.split(",") if w.strip()]
    word_weights = [float(w) for w in args.word_weights.split(",") if w.strip()] if model.word_zipf else []
    ww_cfg = model.word_weight
    lm_cfg = model.lm_weight
    lm = [0.0] + ([0.2, 0.5, 0.8] if model.lm is not None else [])
    members, r2l = list(model.members), list(model.r2l)
    # (name, beam, length_norm, lm_weight, left-to-right members used, right-to-left members used,
    #  lexicon_weight, word_weight)
    n_l, n_r = len(members), len(r2l)
    settings = [("greedy", 1, 0.0, 0.0, n_l, 0, 0.0, 0.0)] + [(f"beam {k}", k, 0.0, 0.0, n_l, 0, 0.0, 0.0)
                                                             for k in (2, 5, 10)]
    settings += [(f"beam 5, length_norm {a}", 5, a, 0.0, n_l, 0, 0.0, 0.0) for a in (0.5, 1.0)]
    settings += [(f"beam 5, lm_weight {w}", 5, 0.0, w, n_l, 0, 0.0, 0.0) for w in lm[1:]]
    if n_l > 1:
        settings += [(f"{m} member(s), beam 5, lm_weight {w}", 5, 0.0, w, m, 0, 0.0, 0.0)
                     for m in range(1, n_l) for w in lm[:2]]
    if r2l:
        settings += [(f"beam 5, {n_r} right-to-left rescoring, lm_weight {w}", 5, 0.0, w, n_l, n_r, 0.0, 0.0)
                     for w in lm]
    if args.only_lexicon:
        settings = []
    full = f"beam {model.beam}" + (f", {n_r} right-to-left rescoring" if r2l else "")
    beam, alpha = model.beam, model.length_norm
    settings += [(f"{full}, lm_weight {lm_cfg}, lexicon_weight {w}", beam, alpha, lm_cfg, n_l, n_r, w, 0.0)
                 for w in [0.0, *lex_weights]]
    lex_cfg = model.lexicon_weight
    settings += [(f"{full}, lm_weight {lm_cfg}, lexicon_weight {lex_cfg}, word_weight {w}", beam, alpha, lm_cfg,
                  n_l, n_r, lex_cfg, w) for w in word_weights]
    if word_weights:
        settings += [(f"{full}, lm_weight {w}, lexicon_weight {lex_cfg}, word_weight {ww_cfg}", beam, alpha, w, n_l,
                      n_r, lex_cfg, ww_cfg) for w in lm if w != lm_cfg]
        if n_l > 1 or n_r > 1:
            settings += [(f"{m} + {r} members, lm_weight {lm_cfg}, lexicon_weight {lex_cfg}, word_weight {ww_cfg}",
                          beam, alpha, lm_cfg, m, r, lex_cfg, ww_cfg)
                         for m, r in sorted({(1, min(1, n_r)), (min(2, n_l), min(1, n_r))} - {(n_l, n_r)})]
    in_lex = sum(r in model.target_lexicon for r in refs) / len(refs)
    print(f"{args.run}: {len(pairs)} words; {len(members)} left-to-right members, {len(r2l)} right-to-left; "
          f"target lexicon {len(model.target_lexicon)} words, holding {in_lex:.1%} of the references\n")
    halves = torch.randperm(len(refs), generator=torch.Generator().manual_seed(0)) < len(refs) // 2
    print("| decoding | word accuracy | half A / half B | top-5 | CER | seconds |\n|---|---|---|---|---|---|")
    for name, k, alpha, lam, n_l2r, n_r2l, lex, ww in settings:
        model.length_norm, model.lm_weight, model.lexicon_weight, model.word_weight = alpha, lam, lex, ww
        model.members, model.r2l = torch.nn.ModuleList(members[:n_l2r]), torch.nn.ModuleList(r2l[:n_r2l])
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
    main()

"""Where a decoder's HAD loss comes from: the teacher with top-N alone, signs alone, both.

HAD changes two things in attention: the scores come from the signs of q and k (times
sigma_Q sigma_K), and only the top N keys of each query row reach the softmax. On SmolLM2
the binarized teacher loses everything (perplexity in the thousands, passkey 0 %) and a
short distillation recovers part of it (docs/results.md). This script measures the two
changes apart, without any training, so that a reader sees which one the student has to
learn around:

``float``       the teacher (float scores, every key);
``float-topn``  float scores, each query row keeps its top N_i = max(1, round(ratio x
                seen_i)) keys (HAD's rule for N per row), softmax over those only;
``float-topnK`` the same with a fixed N = K (``--fixed-top-n K``);
``sign-all``    HAD's hard binarization (sign q, sign k, sigma from the teacher as
                ``hadref.had.decoder_binarize``), every key kept (ratio 1);
``sign-topn``   the binarized teacher of docs/results.md: signs and top-N (ratio).
``sign-all-xC`` (``--sigma-scale C``) sign-all with sigma_Q sigma_K times C: how much of the
                loss is the scores' temperature rather than their signs.
``sign-topn-layerL`` (``--per-layer``) signs and top-N in layer L only, float attention in the
                others: which layers binarization hurts most (perplexity only).

For each: perplexity over the first ``--tokens`` tokens of ``--text`` in disjoint windows of
``--seq`` tokens (``hadref.engine.perplexity``), and optionally passkey retrieval
(``hadref.engine.passkey``, the same prompts and keys as ``hadref passkey``) at
``--passkey-lengths`` with ``--trials`` per depth. One thread is what the figures in
docs/results.md used (``OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1``). ``--json`` keeps
every finished variant; ``--resume`` skips them.

    python benchmarks/lm_attention_ablation.py --model smollm2.h5 \\
        --text ../shared/seeds/001_*.txt ../shared/seeds/003_*.txt --seq 2048 \\
        --passkey-lengths 1024 --trials 2 --json ablation.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from hadref.engine.layers.causal_attention import CausalFloatAttentionCore


class FloatTopNCausalCore(CausalFloatAttentionCore):
    """Float causal attention where query row i keeps only its top N_i keys (inference
    only): N_i = ``top_n`` when fixed, else ``ratio_top_n(ratio, i + 1)``. Ties at the
    N_i-th score keep every tied key (float scores rarely tie)."""

    def __init__(self, top_n: int | None = None, ratio: float = 0.117):
        self.top_n, self.ratio = top_n, ratio

    def forward(self, q, k, v, key_mask, layer, train=False):
        if train:
            raise ValueError("FloatTopNCausalCore is for evaluation only")
        if key_mask is not None and not key_mask.all():
            raise ValueError("FloatTopNCausalCore: padding keys are not supported")
        return self._attend(q, k, v, 0), None

    def forward_cached(self, q, k, v, kv_cache, layer):
        start = kv_cache.lengths[layer]
        keys, values = kv_cache.append(layer, k, v)
        return self._attend(q, keys, values, start)

    def _row_n(self, positions):
        from hadref.had.kernels.causal import ratio_top_n

        if self.top_n is not None:
            return np.minimum(self.top_n, positions + 1)
        return np.array([ratio_top_n(self.ratio, int(p) + 1) for p in positions])

    def _attend(self, q, k, v, first_pos):
        """q (B, h_q, t, d) at positions first_pos + i; k, v (B, h_kv, n, d)."""
        nb, hq, nt, d = q.shape
        hkv = k.shape[1]
        g = hq // hkv
        qg = q.reshape(nb, hkv, g, nt, d)
        ctx = np.empty((nb, hkv, g, nt, d), q.dtype)
        scale = q.dtype.type(1.0 / math.sqrt(d))
        block = self.query_block_rows(nb, hq, k.shape[2])
        for s in range(0, nt, block):
            e = min(nt, s + block)
            pos = first_pos + np.arange(s, e)
            used = int(pos[-1]) + 1
            scores = np.matmul(qg[:, :, :, s:e] * scale, k[:, :, None, :used].swapaxes(-1, -2))
            scores[..., np.arange(used)[None, :] > pos[:, None]] = -np.inf  # causal
            n_row = self._row_n(pos)                                         # (rows,)
            kth = -np.sort(-scores, axis=-1)                                  # descending
            thr = np.take_along_axis(kth, np.broadcast_to(
                (n_row - 1)[:, None], (*scores.shape[:-1], 1)), axis=-1)
            scores[scores < thr] = -np.inf
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx[:, :, :, s:e] = np.matmul(scores, v[:, :, None, :used])
        return ctx.reshape(nb, hq, nt, d)


class OneLayerCore:
    """``inner`` (a HAD core) in the layers of ``layers``, float attention elsewhere;
    inference without a cache (perplexity only)."""

    def __init__(self, inner, layers):
        self.inner, self.layers = inner, set(layers)
        self.float = CausalFloatAttentionCore()

    def forward(self, q, k, v, key_mask, layer, train=False):
        if train:
            raise ValueError("OneLayerCore is for evaluation only")
        core = self.inner if layer in self.layers else self.float
        return core.forward(q, k, v, key_mask, layer, False)


def variants(teacher, args, log, only=()):
    """[(name, model, info)] in the module docstring's order (``only``: those names; sigma is
    measured only when a sign variant is asked for)."""
    from hadref.had.causal_core import binarized_teacher
    from hadref.had.decoder_binarize import decoder_sigma, sigma_windows

    ratio = args.top_n_ratio
    out = [("float", teacher, {"scores": "float", "keys": "all"}),
           ("float-topn", teacher.with_attention_core(FloatTopNCausalCore(ratio=ratio)),
            {"scores": "float", "keys": f"top N = {ratio:g} x seen per row"})]
    for n in args.fixed_top_n or []:
        out.append((f"float-topn{n}", teacher.with_attention_core(FloatTopNCausalCore(top_n=n)),
                    {"scores": "float", "keys": f"top {n}"}))
    signs = [("sign-all", 1.0, "all"), ("sign-topn", ratio, f"top N = {ratio:g} x seen per row")]
    if (not only or args.per_layer or args.sigma_scale
            or any(name in only for name, _, _ in signs)):
        began = time.perf_counter()
        sq, sk = decoder_sigma(teacher, sigma_windows(teacher.tokenizer, args.sigma_windows,
                                                      args.sigma_len))
        log(f"# sigma from pydoc_data.topics ({args.sigma_windows} x {args.sigma_len} tokens) "
            f"in {time.perf_counter() - began:.0f} s")
        out += [(name, binarized_teacher(teacher, sq, sk, top_n_ratio=r),
                 {"scores": "signs (hard)", "keys": keys}) for name, r, keys in signs]
    for c in args.sigma_scale or []:
        # scores x c: sigma_q sigma_K scaled by c (each by sqrt(c)); the signs are the same
        out.append((f"sign-all-x{c:g}", binarized_teacher(
            teacher, sq * math.sqrt(c), sk * math.sqrt(c), top_n_ratio=1.0),
            {"scores": f"signs (hard), sigma_q sigma_k x {c:g}", "keys": "all", "scale": c}))
    if args.per_layer:
        from hadref.had.causal_core import HADCausalCore

        core = HADCausalCore.for_inference(sq, sk, top_n_ratio=args.top_n_ratio)
        out += [(f"sign-topn-layer{i}", teacher.with_attention_core(OneLayerCore(core, [i])),
                 {"scores": f"signs (hard) in layer {i} only", "keys": f"top N = {ratio:g} "
                  "x seen per row in that layer", "layer": i})
                for i in range(teacher.config.num_hidden_layers)]
    return [v for v in out if not only or v[0] in only or "layer" in v[2] or "scale" in v[2]]


def passkey_cells(model, tokenizer, lengths, trials, seed=0):
    """{length: {"correct": c, "trials": t, "by_depth": {depth: c}}} over 5 depths."""
    from hadref.engine.passkey import PromptBuilder, depth_grid, run_trial, trial_key

    builder = PromptBuilder(tokenizer)
    cells = {}
    for length in lengths:
        by_depth = {}
        for depth in depth_grid(5):
            by_depth[f"{depth:g}"] = sum(
                run_trial(model, builder, length, depth, trial_key(seed, length, depth, t))
                ["correct"] for t in range(trials))
        cells[str(length)] = {"correct": sum(by_depth.values()), "trials": 5 * trials,
                              "by_depth": by_depth}
    return cells


def save_json(path, data):
    from hadref.files import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def markdown(data) -> str:
    lines = ["| variant | scores | keys | " + " | ".join(
        f"ppl at {s}" for s in data["settings"]["seq"]) + " | passkey | s |",
             "|---|---|---|" + "---:|" * len(data["settings"]["seq"]) + "---|---:|"]
    for name, r in data["variants"].items():
        ppl = " | ".join(f"{x['ppl']:.2f}" for x in r["perplexity"])
        keys = ", ".join(f"{c['correct']}/{c['trials']} at {n}" for n, c in r.get("passkey", {}).items())
        lines.append(f"| {name} | {r['info']['scores']} | {r['info']['keys']} | {ppl} | "
                     f"{keys or '-'} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the float decoder file (hadref convert smollm2)")
    ap.add_argument("--text", nargs="+", required=True, help="held-out UTF-8 text files")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seq", default="2048", help="perplexity window lengths, comma-separated")
    ap.add_argument("--top-n-ratio", type=float, default=0.117)
    ap.add_argument("--fixed-top-n", type=int, action="append")
    ap.add_argument("--sigma-windows", type=int, default=4)
    ap.add_argument("--sigma-len", type=int, default=1024)
    ap.add_argument("--passkey-lengths", default="", help="e.g. 1024,2048 (empty: no passkey)")
    ap.add_argument("--trials", type=int, default=2, help="passkey trials per depth")
    ap.add_argument("--per-layer", action="store_true",
                    help="also sign-topn in one layer at a time, float elsewhere (perplexity only)")
    ap.add_argument("--sigma-scale", type=float, action="append",
                    help="also sign-all with the scores scaled by this factor (repeatable)")
    ap.add_argument("--only", default="", help="variants to run, comma-separated (default all)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    seqs = [int(x) for x in args.seq.split(",")]
    lengths = [int(x) for x in args.passkey_lengths.split(",") if x]

    import hadref
    from hadref.engine.perplexity import perplexity
    from hadref.errors import HadrefError
    from hadref.files import check_distinct, read_json_file

    def log(msg):
        print(msg, flush=True)

    settings = {"model": args.model, "text": args.text, "tokens": args.tokens, "seq": seqs,
                "top_n_ratio": args.top_n_ratio, "passkey_lengths": lengths,
                "trials": args.trials, "sigma": [args.sigma_windows, args.sigma_len]}
    data = {"settings": settings, "variants": {}}
    try:
        check_distinct({"--model": args.model, **{f"--text {t}": t for t in args.text}},
                       {"--json": args.json})
        old = None
        if Path(args.json).exists():
            if not args.resume:
                raise HadrefError(f"--json {args.json}: file exists; pass --resume to continue it")
            old = read_json_file(args.json, "this script's --json output", "--json ")
    except HadrefError as err:
        ap.error(str(err))
    if old is not None:
        if old.get("settings") != json.loads(json.dumps(settings)):
            ap.error(f"--resume: {args.json} was run with other settings")
        data = old
    teacher = hadref.load(args.model)
    text = "\n\n".join(Path(p).read_text(encoding="utf-8") for p in args.text)
    ids = teacher.tokenizer.encode(text)[:args.tokens]
    only = {x for x in args.only.split(",") if x}
    data["machine"] = {"cpu": _cpu(), "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                       "threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset")}
    for name, model, info in variants(teacher, args, log, only):
        if name in data["variants"]:
            continue
        began = time.perf_counter()
        ppl = perplexity(model, ids, seqs)
        row = {"info": info, "perplexity": [{"seq": x["seq"], "ppl": x["ppl"]}
                                            for x in ppl["lengths"]]}
        log(f"{name}: ppl " + ", ".join(f"{x['ppl']:.2f} at {x['seq']}" for x in row["perplexity"])
            + f" ({time.perf_counter() - began:.0f} s)")
        if lengths and "layer" not in info:
            row["passkey"] = passkey_cells(model, teacher.tokenizer, lengths, args.trials)
            log(f"{name}: passkey " + ", ".join(f"{c['correct']}/{c['trials']} at {n}"
                                                for n, c in row["passkey"].items()))
        row["wall_s"] = time.perf_counter() - began
        data["variants"][name] = row
        save_json(args.json, data)
    print(markdown(data))
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    sys.exit(main())

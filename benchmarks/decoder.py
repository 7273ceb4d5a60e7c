"""Decoder speed and memory: SmolLM2-135M prefill and decoding at 512, 2,048, 8,192 tokens.

- prefill: tokens/s of one forward over T tokens (no logits: what a KV-cache prefill or a
  perplexity pass pays before its LM head), and its peak memory (NumPy's allocations as
  tracemalloc counts them, and the process's peak resident size);
- decoding: tokens/s of one-token steps (LM head included) after T tokens of context
  (the KV cache is filled with random keys and values: the speed does not depend on them);
- the bandwidth bound of decoding: bytes read per token (every float32 weight, the LM head
  once, and the K/V cache of the context) divided by the measured copy bandwidth
  (``np.copyto`` of 512 MB: bytes read + written per second). Both are printed.

PyTorch is optional (``--engine torch`` in an environment that has torch and h5py; this
file imports neither hadref nor torch at the top): the same weights, read from the same
HDF5 file, in a plain eager float32 Llama (``scaled_dot_product_attention``).

    python benchmarks/decoder.py weights/smollm2.h5                     # hadref, all lengths
    python benchmarks/decoder.py weights/smollm2.h5 --lengths 512,2048 --json out.json
    /tmp/torchvenv/bin/python benchmarks/decoder.py weights/smollm2.h5 --engine torch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
import tracemalloc

import numpy as np


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def copy_bandwidth(nbytes=1 << 29, repeats=5) -> float:
    """Bytes per second (read + write) of np.copyto over nbytes arrays (median)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times)


def token_ids(cfg_vocab, n, seed=0):
    return np.random.default_rng(seed).integers(3, cfg_vocab, size=n)


# --- hadref --------------------------------------------------------------------------------------

def run_hadref(path, lengths, decode_steps, repeats):
    import hadref
    from hadref.train.memory import keep_freed_memory

    keep_freed_memory()
    model = hadref.load(path)
    cfg = model.config
    model.forward(token_ids(cfg.vocab_size, 64)[None], compute_logits=False)  # compile
    rows = []
    for n in lengths:
        ids = token_ids(cfg.vocab_size, n)[None]
        times = []
        for r in range(repeats):
            if r == 0:
                tracemalloc.start()
            t = time.perf_counter()
            model.forward(ids, compute_logits=False)
            times.append(time.perf_counter() - t)
            if r == 0:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
        prefill = statistics.median(times)
        # decoding after n tokens of context (at the context limit: as many as fit)
        n = min(n, cfg.max_position_embeddings - decode_steps - 1)
        cache = model.new_kv_cache(n + decode_steps + 1)
        rng = np.random.default_rng(1)
        for layer in range(cfg.num_hidden_layers):
            cache.keys[layer][:, :, :n] = rng.standard_normal(cache.keys[layer][:, :, :n].shape)
            cache.values[layer][:, :, :n] = rng.standard_normal(cache.values[layer][:, :, :n].shape)
            cache.lengths[layer] = n
        token = np.array([[5]])
        model.step(token, cache)  # warm
        t = time.perf_counter()
        for _ in range(decode_steps):
            model.step(token, cache)
        decode = (time.perf_counter() - t) / decode_steps
        rows.append({"tokens": ids.shape[1], "prefill_s": prefill,
                     "prefill_tok_s": ids.shape[1] / prefill, "prefill_peak_traced_bytes": peak,
                     "decode_context": n, "decode_tok_s": 1 / decode,
                     "kv_cache_bytes": cache.nbytes})
        print(f"# done T={ids.shape[1]}", flush=True)
    weight_bytes = sum(v.nbytes for v in model.params.values())
    return rows, weight_bytes, cfg


# --- PyTorch (optional) ---------------------------------------------------------------------------

def run_torch(path, lengths, decode_steps, repeats):
    import h5py
    import torch
    import torch.nn.functional as F

    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["config"])
        p = {name: torch.from_numpy(np.asarray(ds[()], np.float32)) for name, ds in f["params"].items()}
    L, hq, hkv, d = (cfg["num_hidden_layers"], cfg["num_attention_heads"],
                     cfg["num_key_value_heads"], cfg["head_dim"])
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rot(x, cos, sin):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(ids, cache=None):
        start = 0 if cache is None else cache["n"]
        t = ids.shape[1]
        ang = torch.arange(start, start + t, dtype=torch.float32)[:, None] * inv[None]
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos(), ang.sin()
        x = p["embed_tokens.weight"][ids]
        for i in range(L):
            pre = f"layers.{i}."
            h = rms(x, p[pre + "input_layernorm.weight"])
            q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(1, t, hq, d).transpose(1, 2)
            k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(1, t, hkv, d).transpose(1, 2)
            v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(1, t, hkv, d).transpose(1, 2)
            q, k = rot(q, cos, sin), rot(k, cos, sin)
            if cache is not None:
                cache["k"][i][:, :, start:start + t] = k
                cache["v"][i][:, :, start:start + t] = v
                k, v = cache["k"][i][:, :, :start + t], cache["v"][i][:, :, :start + t]
            o = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None, enable_gqa=True)
            x = x + o.transpose(1, 2).reshape(1, t, hq * d) @ p[pre + "self_attn.o_proj.weight"].T
            h = rms(x, p[pre + "post_attention_layernorm.weight"])
            g = F.silu(h @ p[pre + "mlp.gate_proj.weight"].T) * (h @ p[pre + "mlp.up_proj.weight"].T)
            x = x + g @ p[pre + "mlp.down_proj.weight"].T
        if cache is not None:
            cache["n"] = start + t
            return rms(x[:, -1], p["norm.weight"]) @ p["embed_tokens.weight"].T
        return rms(x, p["norm.weight"])

    rows = []
    with torch.inference_mode():
        forward(torch.from_numpy(token_ids(cfg["vocab_size"], 64))[None])
        for n in lengths:
            ids = torch.from_numpy(token_ids(cfg["vocab_size"], n))[None]
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                forward(ids)
                times.append(time.perf_counter() - t)
            prefill = statistics.median(times)
            cache = {"n": n, "k": [torch.randn(1, hkv, n + decode_steps + 1, d) for _ in range(L)],
                     "v": [torch.randn(1, hkv, n + decode_steps + 1, d) for _ in range(L)]}
            token = torch.tensor([[5]])
            forward(token, cache)
            t = time.perf_counter()
            for _ in range(decode_steps):
                forward(token, cache)
            decode = (time.perf_counter() - t) / decode_steps
            rows.append({"tokens": n, "prefill_s": prefill, "prefill_tok_s": n / prefill,
                         "decode_tok_s": 1 / decode})
    return rows, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a decoder model file (hadref convert smollm2 -o ...)")
    ap.add_argument("--lengths", default="512,2048,8192")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="prefill repeats (median)")
    ap.add_argument("--engine", choices=["hadref", "torch"], default="hadref")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for --engine torch (hadref: set "
                         "OPENBLAS_NUM_THREADS)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"# {cpu_name()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    bandwidth = copy_bandwidth()
    print(f"# copy bandwidth {bandwidth / 1e9:.1f} GB/s (np.copyto, read + write)")
    if args.engine == "torch":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        rows, what = run_torch(args.model, lengths, args.decode_steps, args.repeats)
        print(f"# {what}")
        for r in rows:
            print(f"torch  T={r['tokens']:>5}  prefill {r['prefill_tok_s']:8.1f} tok/s "
                  f"({r['prefill_s']:.2f} s)  decoding {r['decode_tok_s']:6.1f} tok/s")
        result = {"engine": "torch", "what": what, "rows": rows}
    else:
        rows, weight_bytes, cfg = run_hadref(args.model, lengths, args.decode_steps, args.repeats)
        kv_per_token = cfg.num_hidden_layers * cfg.num_key_value_heads * 2 * cfg.head_dim * 4
        full_scores = cfg.num_hidden_layers * cfg.num_attention_heads * 4  # x T^2 bytes
        print(f"# weights {weight_bytes / 1e6:.0f} MB float32 read per decoded token; K/V "
              f"cache {kv_per_token} B per token of context")
        for r in rows:
            n = r["tokens"]
            per_token = weight_bytes + kv_per_token * r["decode_context"]
            bound = bandwidth / per_token
            r.update(bytes_per_token=per_token, bound_tok_s=bound,
                     decode_vs_bound=r["decode_tok_s"] / bound)
            print(f"hadref T={n:>5}  prefill {r['prefill_tok_s']:8.1f} tok/s ({r['prefill_s']:.2f} s), "
                  f"peak {r['prefill_peak_traced_bytes'] / 2**20:7.0f} MiB traced "
                  f"(all layers' (T, T) scores would be {full_scores * n * n / 2**30:.1f} GiB)  "
                  f"decoding at {r['decode_context']} {r['decode_tok_s']:6.1f} tok/s = "
                  f"{r['decode_vs_bound']:.2f} x the "
                  f"bound {bound:.1f} tok/s ({per_token / 1e6:.0f} MB/token)")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        print(f"# process peak resident size {rss:.2f} GiB")
        result = {"engine": "hadref", "rows": rows, "copy_bandwidth": bandwidth}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""HAD attention dropped into your own NumPy code, with the float comparison printed.

A toy self-attention block (random projections of random token embeddings) computed
twice: with dense float attention and with HAD attention on packed sign bits (top-N,
sigma from the data as in HAD's standardization). Then the decode-style use: keys packed
once into a PackedKeyCache and queried one new token at a time.

    python examples/embed_attention.py
"""

import time

import numpy as np

import hadref

rng = np.random.default_rng(0)
batch, tokens, hidden, heads = 2, 512, 384, 6
d = hidden // heads
top_n = round(0.117 * tokens)  # the paper's ratio: 60 at 512 tokens

# your model's activations and projections (here random)
x = rng.standard_normal((batch, tokens, hidden), dtype=np.float32)
w_q, w_k, w_v = (rng.standard_normal((hidden, hidden), dtype=np.float32) / np.sqrt(hidden)
                 for _ in range(3))


def split_heads(t):  # (B, T, H) -> (B, heads, T, d)
    return np.ascontiguousarray(t.reshape(batch, tokens, heads, d).transpose(0, 2, 1, 3))


q, k, v = split_heads(x @ w_q), split_heads(x @ w_k), split_heads(x @ w_v)
mask = np.ones((batch, 1, tokens), bool)  # True = valid key; padding would be False
mask[1, :, 400:] = False  # the second sequence is 400 tokens long

# HAD's per-layer standardization coefficients: the standard deviation of Q and K
sigma_q, sigma_k = float(q.std()), float(k.std())

t0 = time.perf_counter()
o_had = hadref.had_attention(q, k, v, top_n, sigma_q, sigma_k, key_mask=mask)
first = time.perf_counter() - t0  # loads (or compiles, on the very first run) the kernels
o_float = hadref.float_attention(q, k, v, key_mask=mask)
t1 = time.perf_counter()
o_float = hadref.float_attention(q, k, v, key_mask=mask)
t2 = time.perf_counter()
o_had = hadref.had_attention(q, k, v, top_n, sigma_q, sigma_k, key_mask=mask)
t3 = time.perf_counter()

rel = np.linalg.norm(o_had - o_float) / np.linalg.norm(o_float)
cos = np.sum(o_had * o_float, -1) / (np.linalg.norm(o_had, axis=-1) * np.linalg.norm(o_float, axis=-1))
print(f"{batch} x {heads} heads x {tokens} tokens, d = {d}, N = {top_n}")
print(f"float attention {1e3 * (t2 - t1):7.1f} ms")
print(f"HAD attention   {1e3 * (t3 - t2):7.1f} ms   (first call {1e3 * first:.0f} ms: kernels "
      f"loaded, or compiled once and cached)")
print(f"relative output error {rel:.3f}, median cosine per output row {np.median(cos):.3f}")
print("(random weights give flat attention, the hardest case for top-N; a distilled "
      "student is trained to make its own top-N attention match)")

# decode-style: pack the keys of the first 500 tokens once, then one token at a time
cache = hadref.PackedKeyCache(k[:, :, :500], v[:, :, :500], key_mask=mask[..., :500],
                              sigma_k=sigma_k)
for t in range(500, tokens):
    cache.append(k[:, :, t:t + 1], v[:, :, t:t + 1], key_mask=mask[..., t:t + 1])
    o_t = cache.attend(q[:, :, t:t + 1], top_n, sigma_q=sigma_q, causal=True)
full = hadref.had_attention(q, k, v, top_n, sigma_q, sigma_k, key_mask=mask, causal=True)
print(f"key cache: {cache.n_keys} tokens, {cache.key_bytes_per_token} B per token packed "
      f"(float32 keys: {batch * heads * d * 4} B); last decoded row equals full causal "
      f"HAD attention: {np.allclose(o_t[:, :, 0], full[:, :, -1], atol=1e-6)}")

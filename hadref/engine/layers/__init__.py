"""The engine's layers: one forward/backward pair per module (llm.c style).

Every ``*_forward`` returns ``(out, cache)``; the matching ``*_backward`` takes the output
gradient and that cache and returns the input gradient and the parameter gradients.
Arrays are C-contiguous float32 (float64 for gradient checks); B batch, T tokens,
H hidden, h heads, d = H / h.

| module | layer |
|---|---|
| linear | y = x W^T + b (Hugging Face weight layout (out, in)) |
| layernorm | LayerNorm over the last axis |
| gelu | exact (erf) GELU |
| dropout | inverted dropout with a seeded numpy Generator (mask kept in the cache) |
| embeddings | word + position + token type, LayerNorm, dropout |
| attention | multi-head self-attention and the attention hook (``FloatAttentionCore``) |
| feedforward | dense -> GELU -> dense |
| encoder_layer | attention, residual + LayerNorm, feed-forward, residual + LayerNorm |
| pooler | tanh(dense(hidden[:, 0])) |
| classifier | dropout -> dense on the pooled output |
| losses | softmax cross-entropy and MSE (value and gradient) |
| rmsnorm | RMSNorm over the last axis (Llama) |
| rope | rotary position embedding (Hugging Face's rotate-half layout) |
| swiglu | silu(gate) * up and the Llama feed-forward block down(swiglu(x)) |
| causal_attention | grouped-query causal self-attention, its float core and KV cache |

The decoder layers name what a forward saves for its backward (NamedTuple caches).
"""

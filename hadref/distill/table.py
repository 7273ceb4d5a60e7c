"""The GLUE table of HAD (the paper's Table 1 on our models), made by one resumable runner.

Per task: a teacher fine-tuned from the pre-trained encoder, then for each seed the HAD
student with the chosen recipe, the paper's recipe, and the ablations w/o AD and w/o Tanh;
the teacher binarized without distillation comes with every student run (its stage 0).
The recipe is chosen per task by :func:`select_recipes` on held-out *training* rows
(``DataSource.holdout``: the teacher and the candidates train on the rest), never on dev,
and so, when candidates are given, is the teacher's fine-tune recipe (epochs, learning
rate); :func:`run_table` then trains on the whole training set with the chosen teacher
settings and reports dev once per seed.

Every run is a job of :mod:`hadref.train.jobs` / :mod:`hadref.distill.run` writing its
model file and, when it finishes, ``OUT/TASK/NAME.json`` (its result, settings and code
version). A second call skips finished runs and resumes an interrupted one from its
checkpoint, so the table fills task by task across sessions.

Layout of ``OUT``::

    TASK/teacher.h5, teacher.json                 the teacher (seed 0)
    TASK/ROW-seedS.h5, ROW-seedS.json             rows had, paper, no_ad, no_tanh (the
                                                  paper row is had-seedS when the chosen
                                                  recipe is the paper's)
    TASK/select/teacher.h5, RECIPE.h5, *.json     the recipe selection (holdout)
    TASK/select/teacher-TAG/teacher.h5, ...       the same per teacher candidate (TAG:
                                                  eEPOCHS-lrLR); the chosen one's folder
                                                  also holds the RECIPE runs
    TASK/selection.json                           the chosen recipe (and teacher), the evidence
    table.md, table.json                          the table, mean +- std over seeds
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from hadref.data import get_task
from hadref.distill.settings import DistillSettings
from hadref.errors import HadrefError
from hadref.files import atomic_file
from hadref.train.finetune import FinetuneSettings
from hadref.train.jobs import DataSource

# Candidate recipes: overrides of the schedule preset ({} is the paper's four stages).
RECIPES = {
    "paper": {},
    # stages 1-2 annealed three times slower, the STE stage 3 left out (stage 2 goes
    # straight to stage 4): the recipe that session 5 found on SST-2 (by dev, so it must
    # win again on held-out training rows to be chosen here)
    "slow-no-ste3": {"gamma": math.exp(-math.log(100.0) / 4500), "stage3_steps": 0},
}

ROWS = ("teacher", "binarized", "had", "paper", "no_ad", "no_tanh")
ROW_NAMES = {"teacher": "teacher (float)", "binarized": "teacher binarized, no distillation",
             "had": "HAD student (chosen recipe)", "paper": "HAD, the paper's recipe",
             "no_ad": "w/o AD", "no_tanh": "w/o Tanh"}
# the runs that a student row needs (binarized is the stage 0 of the 'had' run)
_RUN_OF_ROW = {"binarized": "had", "had": "had", "paper": "paper", "no_ad": "no_ad",
               "no_tanh": "no_tanh"}

# The paper's Table 1 (BERT-base, 256 tokens, N = 30): another model, for reference only.
PAPER_TABLE = {
    # task: (baseline, HAD, BiT, w/o AD, w/o Tanh)
    "mnli": ("84.58/84.46", "82.45/82.84", "79.5/79.4", "82.00/82.25", "82.23/82.58"),
    "qqp": ("90.91", "90.11", "85.4", "89.51", "90.15"),
    "qnli": ("91.54", "89.68", "86.4", "89.75", "89.64"),
    "sst2": ("92.43", "91.63", "89.9", "90.71", "90.60"),
    "cola": ("53.39", "55.47", "32.9", "55.82", "52.32"),
    "stsb": ("87.63", "87.46", "72.0", "86.77", "86.78"),
    "mrpc": ("87.75", "83.82", "79.9", "82.11", "83.5"),
    "rte": ("72.56", "65.70", "62.1", "64.26", "66.06"),
}


@dataclass
class TableSpec:
    """What the table is made of.

    encoder: the pre-trained encoder file (``hadref convert minilm``); out: the run folder;
    tasks: GLUE task names; seeds: student seeds (the teacher uses seed 0); rows: among
    ``ROWS``; schedule: the distillation preset every recipe starts from; recipe: a name of
    ``RECIPES`` for the 'had' row of every task, or None for each task's selection; top_n:
    N; max_len: tokens per example (None: the schedule's); finetune: the teacher's
    settings (epochs and lr give way to a teacher chosen by :func:`select_recipes` with
    candidates, unless named in ft_given); ft_given: the fields of ``finetune`` the user
    set explicitly (``"epochs"``, ``"lr"``): a chosen teacher with other values is then an
    error; data: where the GLUE data is (and limits, for tests); overrides:
    DistillSettings fields set on every run after the recipe (short runs for tests).
    """

    encoder: Path
    out: Path
    tasks: list
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    rows: list = field(default_factory=lambda: list(ROWS))
    schedule: str = "quick"
    recipe: str | None = None
    top_n: int = 30
    max_len: int | None = None
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    data: DataSource = field(default_factory=DataSource)
    overrides: dict = field(default_factory=dict)   # DistillSettings fields for every run
    ft_given: tuple = ()

    def __post_init__(self):
        self.encoder, self.out = Path(self.encoder), Path(self.out)
        self.tasks = [get_task(t).name for t in self.tasks]
        bad = [r for r in self.rows if r not in ROWS]
        if bad:
            raise HadrefError(f"--rows: unknown row {bad[0]!r}; expected among {', '.join(ROWS)}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise HadrefError(f"--recipe: unknown recipe {self.recipe!r}; expected one of "
                              f"{', '.join(RECIPES)}")
        if not self.seeds:
            raise HadrefError("--seeds: expected at least one seed")

    def distill_settings(self, recipe: str, seed: int, **ablation) -> DistillSettings:
        return DistillSettings.from_schedule(self.schedule, **{
            "top_n": self.top_n, "max_len": self.max_len, "seed": seed, **RECIPES[recipe],
            **ablation, **self.overrides})

    def teacher_settings(self, epochs: float | None = None,
                         lr: float | None = None) -> FinetuneSettings:
        """The teacher's settings: ``finetune`` at the schedule's max_len, seed 0; a
        candidate's ``epochs`` and ``lr`` replace its own (and its steps: the candidate
        gives the length in epochs)."""
        max_len = DistillSettings.from_schedule(self.schedule, max_len=self.max_len).max_len
        settings = dataclasses.replace(self.finetune, max_len=max_len, seed=0)
        if epochs is not None:
            settings = dataclasses.replace(settings, epochs=float(epochs), lr=float(lr),
                                           steps=None)
        return settings


def code_version() -> str:
    """The git commit of the hadref source tree when it is a checkout, else the version."""
    import hadref

    root = Path(hadref.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "hadref", "cli", "hw"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return f"hadref {hadref.__version__}"
    if out.returncode != 0:
        return f"hadref {hadref.__version__}"
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _write_json(path: Path, record: dict) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def _once(json_path: Path, job, say, asked: dict) -> dict:
    """The record at ``json_path`` if that run finished, else ``job(resume)`` recorded there.

    asked: the run's ``settings`` and ``data`` (dicts); a finished record made with others
    (another recipe, teacher settings or data limits in the same --out) is an error, never
    reported as this run's."""
    if json_path.is_file():
        record = json.loads(json_path.read_text())
        asked = json.loads(json.dumps(asked))  # as the record stores them
        for key, value in asked.items():
            if record.get(key) != value:
                stored = record.get(key) or {}
                diff = sorted(f for f in set(stored) | set(value)
                              if stored.get(f) != value.get(f)) if isinstance(stored, dict) else [key]
                raise HadrefError(f"{json_path}: a finished run made with other {key} "
                                  f"({', '.join(diff[:4])} differ); use another --out folder "
                                  "or remove that run's files")
        return record
    json_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = json_path.with_suffix(".ckpt.h5")
    # no checkpoint and no record: whatever the run left (a log, a model file written just
    # before an interruption) belongs to a run that cannot be continued, so it starts again
    # over its own files rather than stopping at them
    say(f"{json_path.parent.name}/{json_path.stem}: " + ("resuming" if ckpt.is_file() else "start"))
    record = {**job(ckpt.is_file()), "code": code_version()}
    _write_json(json_path, record)
    return record


def _teacher(spec: TableSpec, task: str, folder: Path, data: DataSource, progress, say,
             settings: FinetuneSettings | None = None) -> dict:
    from hadref.train.jobs import run_finetune

    settings = settings or spec.teacher_settings()

    def job(resume):
        result = run_finetune(spec.encoder, task, settings, folder / "teacher.h5", data=data,
                              resume=resume, overwrite=not resume, progress=progress)
        return {**result, "settings": settings.to_dict(), "data": data.to_dict()}

    return _once(folder / "teacher.json", job, say,
                 {"settings": settings.to_dict(), "data": data.to_dict()})


def _student(spec: TableSpec, task: str, folder: Path, name: str, settings: DistillSettings,
             data: DataSource, progress, say) -> dict:
    from hadref.distill.run import run_distill

    def job(resume):
        result = run_distill(folder / "teacher.h5", task, settings, folder / f"{name}.h5",
                             allow_finetune=False, data=data, resume=resume,
                             overwrite=not resume, progress=progress)
        return {**result, "settings": settings.to_dict(), "data": data.to_dict()}

    return _once(folder / f"{name}.json", job, say,
                 {"settings": settings.to_dict(), "data": data.to_dict()})


def _teacher_tag(epochs: float, lr: float) -> str:
    """The folder name of a teacher candidate under ``TASK/select``: ``teacher-e6-lr0.0001``."""
    return f"teacher-e{epochs:g}-lr{lr:g}"


def select_recipes(spec: TableSpec, recipes=None, holdout: float = 0.1, progress=True,
                   notify=None, teachers=None) -> dict:
    """Choose each task's recipe on held-out training rows; returns {task: selection}.

    For each task a teacher is fine-tuned on the training rows minus a ``holdout``
    fraction (seed 0), each candidate recipe distills it (seed 0) on the same rows, and the
    recipe with the best main metric on the held-out rows wins (ties: the earlier
    candidate, ``paper`` first). Writes ``OUT/TASK/selection.json``.

    teachers: teacher candidates ``[(epochs, lr), ...]`` (None: the one teacher of
    ``spec.finetune``, in ``TASK/select/teacher.h5``). Each is fine-tuned on the same rows
    in its own folder ``TASK/select/teacher-eEPOCHS-lrLR`` (``teacher-e6-lr0.0001``), the
    best on the held-out rows wins (ties: the earlier candidate), and the recipes distill
    the chosen one (in its folder); selection.json then also holds ``teacher`` (the chosen
    epochs and lr, which :func:`run_table` uses) and ``teacher_candidates`` (each one's
    held-out score).
    """
    say = notify or (lambda message: None)
    recipes = list(recipes or RECIPES)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise HadrefError(f"--recipes: unknown recipe {unknown[0]!r}; expected among "
                          f"{', '.join(RECIPES)}")
    teachers = [(float(e), float(lr)) for e, lr in teachers or []]
    bad = [(e, lr) for e, lr in teachers if not (0 < e < math.inf and 0 < lr < math.inf)]
    if bad:
        raise HadrefError(f"--ft-candidates: epochs and lr must be positive numbers, got "
                          f"{bad[0][0]:g}:{bad[0][1]:g}")
    tags = [_teacher_tag(e, lr) for e, lr in teachers]
    twice = [tag for i, tag in enumerate(tags) if tag in tags[:i]]
    if twice:
        raise HadrefError(f"--ft-candidates: the candidate {twice[0][len('teacher-'):]} is "
                          "given twice")
    given = [f"--ft-{name}" for name in ("epochs", "lr") if name in spec.ft_given]
    if teachers and given:
        raise HadrefError(f"--ft-candidates: give the teacher's epochs and lr there, not also "
                          f"{' and '.join(given)}")
    if not teachers:
        # a selection that chose its teacher among candidates would be replaced by one
        # without them, and the table's finished teacher (the chosen one) would then no
        # longer match: say so before any work
        for task in spec.tasks:
            chosen_teacher = (_selection(spec, task) or {}).get("teacher")
            if chosen_teacher:
                raise HadrefError(
                    f"{spec.out / task / 'selection.json'}: its teacher was chosen among "
                    f"--ft-candidates (epochs {chosen_teacher['epochs']:g}, lr "
                    f"{chosen_teacher['lr']:g}); repeat --ft-candidates, or use another --out")
    data = dataclasses.replace(spec.data, holdout=holdout, holdout_seed=0)
    selections = {}
    for task in spec.tasks:
        t = get_task(task)
        metric = t.metrics[0]
        folder = spec.out / task / "select"
        records = [_teacher(spec, task, folder / tag, data, progress, say,
                            spec.teacher_settings(epochs, lr))
                   for (epochs, lr), tag in zip(teachers, tags)]
        candidates = [{"epochs": epochs, "lr": lr, "holdout_metric": r["metrics"][metric]}
                      for (epochs, lr), r in zip(teachers, records)]
        if candidates:
            best = max(range(len(candidates)),
                       key=lambda i: (candidates[i]["holdout_metric"], -i))
            folder = folder / tags[best]   # the chosen teacher's folder: the recipes' runs
            teacher = records[best]
            say(f"{task}: teacher {tags[best]} (held-out {metric}: "
                + ", ".join(f"{tag} {100 * c['holdout_metric']:.2f}"
                            for tag, c in zip(tags, candidates)) + ")")
        else:
            teacher = _teacher(spec, task, folder, data, progress, say)
        scores = {}
        for recipe in recipes:
            record = _student(spec, task, folder, recipe, spec.distill_settings(recipe, 0),
                              data, progress, say)
            scores[recipe] = record["metrics"][metric]
        chosen = max(recipes, key=lambda r: (scores[r], -recipes.index(r)))
        selection = {"task": task, "chosen": chosen, "metric": metric,
                     "holdout_metric": scores, "holdout": holdout,
                     "teacher_holdout_metric": teacher["metrics"][metric],
                     "schedule": spec.schedule, "code": code_version()}
        if candidates:
            selection.update(teacher={"epochs": teachers[best][0], "lr": teachers[best][1]},
                             teacher_candidates=candidates)
        _write_json(spec.out / task / "selection.json", selection)
        say(f"{task}: recipe {chosen} (held-out {metric}: "
            + ", ".join(f"{r} {100 * v:.2f}" for r, v in scores.items()) + ")")
        selections[task] = selection
    return selections


def _selection(spec: TableSpec, task: str) -> dict | None:
    path = spec.out / task / "selection.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _known_recipe(spec: TableSpec, task: str) -> str | None:
    """--recipe, else the task's chosen recipe, else None (no selection yet)."""
    if spec.recipe is not None:
        return spec.recipe
    selection = _selection(spec, task)
    return selection["chosen"] if selection else None


def _chosen_recipe(spec: TableSpec, task: str) -> str:
    recipe = _known_recipe(spec, task)
    if recipe is None:
        raise HadrefError(f"{spec.out / task / 'selection.json'}: no recipe chosen for {task} "
                          "yet: run the selection first (hadref glue --select) or name one "
                          "with --recipe")
    return recipe


def _table_teacher(spec: TableSpec, task: str) -> FinetuneSettings:
    """The table teacher's settings: the teacher chosen by the selection when it chose one
    (an old selection.json has none: ``spec.finetune`` as given), else ``spec.finetune``."""
    chosen = (_selection(spec, task) or {}).get("teacher")
    if chosen is None:
        return spec.teacher_settings()
    differ = [f"--ft-{name} {getattr(spec.finetune, name):g}" for name in ("epochs", "lr")
              if name in spec.ft_given and getattr(spec.finetune, name) != chosen[name]]
    if differ:
        raise HadrefError(f"{spec.out / task / 'selection.json'}: the chosen teacher has "
                          f"epochs {chosen['epochs']:g}, lr {chosen['lr']:g}, not "
                          f"{', '.join(differ)}; leave those options out or use another --out")
    return spec.teacher_settings(chosen["epochs"], chosen["lr"])


def _paper_run(folder: Path, seed: int) -> str:
    """The name of the run that is both the 'had' and the 'paper' row when the chosen
    recipe is the paper's: had-seedS, unless only paper-seedS was begun (made while the
    recipe was not chosen yet), which is then reused."""
    def begun(name):
        return (folder / f"{name}.json").is_file() or (folder / f"{name}.ckpt.h5").is_file()

    had, paper = f"had-seed{seed}", f"paper-seed{seed}"
    return paper if begun(paper) and not begun(had) else had


def run_table(spec: TableSpec, progress=True, notify=None) -> dict:
    """Make (or finish) every run of the table; write ``table.md`` and ``table.json``.

    Returns ``{task: {row: [metric per seed]}}`` (main metric, fractions; the teacher row
    has one value).
    """
    say = notify or (lambda message: None)
    results = {}
    for task in spec.tasks:
        t = get_task(task)
        folder = spec.out / task
        metric = t.metrics[0]
        rows = {}
        # the recipe whenever it is known, so that the paper row's file never takes the
        # name of a later chosen-recipe run (unknown: the paper row is paper-seedS)
        recipe = (_chosen_recipe(spec, task) if any(
            r in spec.rows for r in ("had", "binarized", "no_ad", "no_tanh"))
            else _known_recipe(spec, task))
        teacher = _teacher(spec, task, folder, spec.data, progress, say,
                           _table_teacher(spec, task))
        if "teacher" in spec.rows:
            rows["teacher"] = [teacher["metrics"][metric]]
        runs = {"had": (recipe, {}), "paper": ("paper", {}),
                "no_ad": (recipe, {"attn_loss": False}), "no_tanh": (recipe, {"tanh": False})}
        for seed in spec.seeds:
            names = {run: f"{run}-seed{seed}" for run in runs}
            if recipe == "paper":
                names["had"] = names["paper"] = _paper_run(folder, seed)  # one run, made once
            done = {}
            for row in spec.rows:
                if row == "teacher":
                    continue
                run = _RUN_OF_ROW[row]
                if names[run] not in done:
                    name, ablation = runs[run]
                    done[names[run]] = _student(spec, task, folder, names[run],
                                                spec.distill_settings(name, seed, **ablation),
                                                spec.data, progress, say)
                record = done[names[run]]
                value = (record["stage_metrics"]["0"][metric] if row == "binarized"
                         else record["metrics"][metric])
                rows.setdefault(row, []).append(value)
        results[task] = {"metric": metric, "recipe": recipe, "rows": rows}
    _write_json(spec.out / "table.json", {"tasks": results, "seeds": spec.seeds,
                                          "schedule": spec.schedule, "top_n": spec.top_n,
                                          "code": code_version()})
    (spec.out / "table.md").write_text(table_markdown(results, spec))
    return results


def _mean_std(values: list) -> str:
    pct = [100.0 * v for v in values]
    mean = sum(pct) / len(pct)
    if len(pct) == 1:
        return f"{mean:.2f} (1 seed)"
    std = math.sqrt(sum((v - mean) ** 2 for v in pct) / (len(pct) - 1))
    return f"{mean:.2f} +- {std:.2f} ({len(pct)})"


def table_markdown(results: dict, spec: TableSpec) -> str:
    """The table as markdown: rows x tasks, mean +- sample std over seeds (n), in percent,
    then the paper's BERT-base figures for the same tasks (another model)."""
    tasks = list(results)
    head = "| | " + " | ".join(f"{get_task(t).folder} ({results[t]['metric']})"
                                for t in tasks) + " |"
    lines = [head, "|---" * (len(tasks) + 1) + "|"]
    for row in ROWS:
        if not any(row in results[t]["rows"] for t in tasks):
            continue
        cells = [_mean_std(results[t]["rows"][row]) if row in results[t]["rows"] else ""
                 for t in tasks]
        label = ROW_NAMES[row] + (" (" + ", ".join(sorted({results[t]["recipe"] for t in tasks}))
                                  + ")" if row == "had" else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"MiniLM-L6, schedule {spec.schedule}, N = {spec.top_n}, seeds "
              f"{', '.join(map(str, spec.seeds))}; mean +- sample std (number of seeds), dev set.",
              "", "The paper's Table 1 (BERT-base, 256 tokens; another model, for reference):", "",
              "| | " + " | ".join(get_task(t).folder for t in tasks) + " |",
              "|---" * (len(tasks) + 1) + "|"]
    for i, name in enumerate(("baseline", "HAD", "BiT", "w/o AD", "w/o Tanh")):
        lines.append(f"| {name} | " + " | ".join(PAPER_TABLE.get(t, ("",) * 5)[i] for t in tasks)
                     + " |")
    return "\n".join(lines) + "\n"

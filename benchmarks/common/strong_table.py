"""The strong benchmark's machinery, shared by its tables (``benchmarks/cub100_strong.py`` on the birds,
``benchmarks/cars196.py`` on the cars): a teacher scored once and banked per student normalisation, rows of
students alone and distilled run over seeds (finished runs reused), ``--rows`` merged into the committed JSON,
each student's size and speed, and the Markdown table.

A table script holds only what differs between datasets: its students and the labels of their rows
(:class:`Student`, :class:`Method`) and a :class:`Table` naming its configs, paths and words, whose ``main`` is the
script's. Each row's recipe is a YAML file, ``<configs>/rows/<student config's stem>/<method key>.yaml``, that
``embdistill train`` or ``embdistill distill -c FILE`` runs as it stands (seed 0, paths relative to the repository);
the table sets only where its data, runs, teacher and bank are, the seed and run name, and ``--smoke``'s sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embdistill.config import ExperimentConfig, load_config, read_yaml, to_dict
from embdistill.engine.teacher.bank import fill_bank_for_config
from embdistill.models.embedder import create_embedder
from embdistill.report.modelstats import count_mflops, count_parameters, cpu_throughput

from benchmarks.common import KEYS, RESULTS, cell, machine, pooled_std, repo_relative
from benchmarks.common import command as command_line
from benchmarks.common.runs import Row, run_cached

# Each run trains on the train classes less the held-out ones, keeps the weights of the epoch with the best held-out
# R@1, and scores the test classes once. How often it scores the held-out classes and how many readings without a
# better one stop it (every epoch and 4 in the 10-epoch rows) are the row's own, in its YAML. A row's YAML holds
# these values too, so that it runs as the table runs it.
CHOOSE = ("eval.split=test", "train.select=best", "train.select_metric=recall@1")


@dataclass(frozen=True)
class Method:
    """A row of a student: its key (its recipe is ``rows/<student>/<key>.yaml``), its label in the table, its seeds."""
    key: str
    label: str
    seeds: str  # "all": every --seeds; "one": the first
    baseline: str = "alone"  # the row its gain is measured against: the student alone under the same choice of recipe


@dataclass(frozen=True)
class Student:
    name: str
    config: str
    methods: tuple[Method, ...]
    bank_tag: str = ""  # the bank's views are rendered in the student's input normalisation: one bank per normalisation
    validation_classes: int = 0  # rows train on the other train classes and choose their epoch on these (CHOOSE)


def row_id(student: Student, method: Method) -> str:
    return f"{Path(student.config).stem}/{method.key}"


def _run_cached(cfg: ExperimentConfig) -> dict:
    """Run ``cfg`` unless the same config already finished in its run directory."""
    s = run_cached(cfg)
    return {"seed": cfg.seed, "run_dir": str(cfg.run_dir), **{k: s[k] for k in KEYS},
            "train_seconds": s["train_seconds"], "teacher_forward_images": s["teacher_forward_images"],
            "embedding_spread": s.get("embedding_spread"), "collapse_warning": s.get("collapse_warning"),
            **({"initial": {k: s["initial"][k] for k in KEYS}} if s.get("initial") else {}),
            **({"epoch": s["epoch"], "selected": s["selected"],
                "validation_curve": [{k: c[k] for k in ("epoch", "recall@1", "map@r")} for c in s["validation_curve"]]}
               if "selected" in s else {})}


def _base(args: argparse.Namespace) -> list[str]:
    return [f"output_dir={args.output}", f"data.root={Path(args.data).resolve()}"]


def _smoke(args: argparse.Namespace) -> list[str]:
    return ["train.epochs=1", "train.batches_per_epoch=2"] if args.smoke else []


def _student_overrides(args: argparse.Namespace, student: Student) -> list[str]:
    held_out = [f"data.validation_classes={student.validation_classes}"] if student.validation_classes else []
    return [*(["data.image_size=32"] if args.smoke else []), *held_out]


@dataclass(frozen=True)
class Table:
    """One dataset's strong benchmark: what its script names, and everything that runs and renders it."""

    module: str  # the script, as its results' commands name it: "benchmarks.cub100_strong"
    doc: str  # the script's docstring: its --help
    name: str  # the results' file names: <results>/<name>.{json,md}
    configs: Path  # the students' configs (Student.config is a file name there) and their rows' (rows/ there)
    teacher_config: Path
    students: tuple[Student, ...]
    data: Path  # --data's default
    output: Path  # --output's default: the runs and banks
    title: str  # the Markdown's heading, before ": N rows"
    classes: str  # what the dataset's classes are: "species", "models"
    test_classes: str  # where the teacher is scored: "the 42 unseen species"
    train_images: str  # what the main bank holds a view of: "the 3,428 training images"
    teacher: str = "EfficientNet-Lite0 ImageNet features"
    views: int = 4  # fixed augmented views per training image in the bank
    teacher_size: int = 224
    smoke_data: Callable[[Path, Path], Path] | None = None  # --smoke: (data, output) -> a few of the data's images

    # ------------------------------------------------------------------------- running

    def bank_path(self, args: argparse.Namespace, teacher_size: int, views: int, student: Student) -> Path:
        held_out = f"_val{student.validation_classes}" if student.validation_classes else ""  # its train classes differ
        return Path(args.output) / "banks" / f"lite0_{teacher_size}_v{views}{student.bank_tag}{held_out}.bank"

    def main_bank(self, teacher_size: int | None = None, views: int | None = None) -> str:
        """The first student's bank file name (the table's header names it); by default the full benchmark's."""
        args = argparse.Namespace(output="")
        return self.bank_path(args, teacher_size or self.teacher_size, views or self.views, self.students[0]).name

    def selected(self, args: argparse.Namespace) -> list[tuple[Student, Method]]:
        return [(s, m) for s in self.students for m in s.methods if not args.rows or row_id(s, m) in args.rows]

    def row_config(self, student: Student, method: Method) -> Path:
        """The row's recipe: a config file that ``embdistill train`` / ``distill -c`` runs as it stands."""
        return self.configs / "rows" / f"{row_id(student, method)}.yaml"

    def distilled(self, student: Student, method: Method) -> bool:
        """Whether the row learns from the teacher (its recipe has a ``distill`` section): it reads a bank."""
        return bool(read_yaml(self.row_config(student, method)).get("distill"))

    def command(self) -> str:
        return command_line(self.module)

    def run(self, args: argparse.Namespace) -> dict:
        started = time.perf_counter()
        base = _base(args)
        teacher_size = 48 if args.smoke else self.teacher_size
        teacher_overrides = [*base, f"data.image_size={teacher_size}"]
        teacher_cfg = load_config(self.teacher_config, teacher_overrides)
        if teacher_cfg.train.epochs:  # a fine-tuned teacher (its config chooses its epoch on held-out classes)
            teacher_cfg = load_config(self.teacher_config, [*teacher_overrides, *_smoke(args)])
        teacher = _run_cached(teacher_cfg)
        teacher_weights = teacher_cfg.run_dir / ("best.pt" if teacher_cfg.train.select == "best" else "last.pt")
        views = 1 if args.smoke else self.views
        distill: dict[str, list[str]] = {}  # student name -> its distilled rows' overrides
        banks: dict[str, dict] = {}  # bank file name -> where it is, its views and fill time
        # The banks that a selected row reads (with --bank-only: every student's), each filled once.
        needed = [s for s in self.students if args.bank_only or any(st is s and self.distilled(st, m) for st, m in self.selected(args))]
        for student in needed:
            bank = self.bank_path(args, teacher_size, views, student)
            distill[student.name] = [f"distill.teacher={teacher_weights}", f"distill.teacher_image_size={teacher_size}",
                                     f"distill.cache_views={views}", f"distill.bank={bank}"]
            if bank.name in banks:
                continue
            bank_started = time.perf_counter()
            bank_cfg = load_config(self.configs / student.config, [*base, *_student_overrides(args, student), *distill[student.name],
                                                                   "name=bank", "distill.terms=[{name: relative}]"])
            timing = bank.with_suffix(".seconds.json")  # the fill time, kept for a benchmark that finds the bank filled
            existed = bank.is_file()
            fill_bank_for_config(bank_cfg, progress=False)  # fills a missing bank; refuses a stale one
            if not existed:
                timing.write_text(json.dumps({"fill_seconds": round(time.perf_counter() - bank_started, 1)}) + "\n")
            banks[bank.name] = {"path": str(bank), "views": views,
                                "fill_seconds": json.loads(timing.read_text())["fill_seconds"] if timing.is_file() else None}
            print(f"[bench] teacher R@1 {100 * teacher['recall@1']:.1f}; bank {bank} ready", flush=True)
        if args.bank_only:
            return {}
        rows: list[Row] = []
        for s, m in self.selected(args):
            row_started = time.perf_counter()
            row = Row(s.name, m)
            rows.append(row)
            for seed in args.seeds if m.seeds == "all" else args.seeds[:1]:
                o = [*base, *_student_overrides(args, s), *(CHOOSE if s.validation_classes else ()), f"seed={seed}",
                     f"name={row_id(s, m)}/seed{seed}"]
                if self.distilled(s, m):
                    o += distill[s.name]  # the teacher and bank of this run: the terms are the row's
                o += _smoke(args)  # last, so that it also shortens the rows' own schedules
                cfg = load_config(self.row_config(s, m), o)
                row.config = row.config or to_dict(cfg)
                row.runs.append(_run_cached(cfg))
                print(f"[bench] {s.name} {m.label} seed {seed}: R@1 {100 * row.runs[-1]['recall@1']:.1f}", flush=True)
            row.ran = {"command": self.command(), "date": time.strftime("%Y-%m-%d"),
                       "minutes": round((time.perf_counter() - row_started) / 60, 1)}
        main_bank = self.main_bank(teacher_size, views)
        result = repo_relative({
            "command": self.command(),
            "machine": machine(),
            "minutes": round((time.perf_counter() - started) / 60, 1),
            "seeds": args.seeds,
            "teacher_image_size": teacher_size,
            "student_image_size": rows[0].config["data"]["image_size"],
            "bank": banks.get(main_bank),  # the first student's bank (the header's)
            "banks": banks,
            "students": {s.name: self.network_stats(s, args) for s in self.students if any(st is s for st, _ in self.selected(args))},
            "teacher": {**teacher, "config": to_dict(teacher_cfg)},
            "rows": [{"student": r.student, "method": r.method.key, "label": r.method.label, "seeds": r.method.seeds,
                      **({"baseline": r.method.baseline} if r.method.baseline != "alone" else {}),
                      "ran": r.ran, "runs": r.runs, "config": r.config} for r in rows],
        })
        return self.keep_other_rows(result, Path(args.results) / f"{self.name}.json", main_bank) if args.rows else result

    def network_stats(self, student: Student, args: argparse.Namespace) -> dict:
        """Parameters, mult-adds and CPU inference images/s of the student's embedder at its input size."""
        cfg = load_config(self.configs / student.config, [*_base(args), *_student_overrides(args, student)])
        model = create_embedder(dataclasses.replace(cfg.model, pretrained=False))
        size = cfg.data.image_size
        return {"image_size": size, "params_m": round(count_parameters(model) / 1e6, 3),
                "mult_adds_m": round(count_mflops(model, size), 1), "cpu_images_per_s": round(cpu_throughput(model, size), 1)}

    def keep_other_rows(self, result: dict, previous_path: Path, main_bank: str | None = None) -> dict:
        """``result`` plus every row of ``previous_path`` it did not rerun, in the order of ``students``.

        With no ``previous_path`` yet, the table is ``result`` alone: a long table can be started a part at a time."""
        if not previous_path.is_file():
            print(f"[bench] {previous_path} does not exist yet: the table holds only the rows just run", flush=True)
            return result
        main_bank = main_bank or self.main_bank()
        previous = json.loads(previous_path.read_text())
        order = [(s.name, m.key) for s in self.students for m in s.methods]
        rerun = {(r["student"], r["method"]) for r in result["rows"]}
        kept = [r for r in previous["rows"] if (r["student"], r["method"]) not in rerun and (r["student"], r["method"]) in order]
        for r in previous["rows"]:
            if (r["student"], r["method"]) not in order:
                print(f"[bench] dropping the row {r['student']} / {r['method']} of {previous_path}: no such row in STUDENTS", flush=True)
        rows = sorted(kept + result["rows"], key=lambda r: order.index((r["student"], r["method"])))
        banks = {**previous.get("banks", {main_bank: previous.get("bank")}), **result["banks"]}  # an older JSON had one bank
        # A student's network figures stay those measured with its first rows: a later --rows run, perhaps on another
        # day's machine, adds rows, not a second throughput for the same network.
        students = {**result.get("students", {}), **previous.get("students", {})}
        return {**result, "rows": rows, "banks": banks, "bank": banks.get(main_bank), "students": students}

    # ------------------------------------------------------------------------- the table

    def schedule(self, train: dict) -> str:
        """A row's schedule in words (a batch holds P classes × K images each)."""
        batch = f"{train['classes_per_batch']} {self.classes} × {train['images_per_class']} images a batch"
        epochs = f"at most {train['epochs']} epochs (the epoch chosen per run)" if train.get("select") == "best" else f"{train['epochs']} epochs"
        return f"{epochs}, lr {train['lr']:g}, backbone ×{train['backbone_lr_mult']:g}, {batch}"

    def _teacher_training(self, t: dict) -> str:
        """How the teacher came to be: its ImageNet features, or fine-tuned with its epoch chosen on held-out classes."""
        if "epoch" not in t:
            return "no head, not fine-tuned"
        c = t["config"]
        curve = " ".join(f"{100 * p['recall@1']:.1f}" for p in t["validation_curve"])
        before = f"; before fine-tuning, its ImageNet features: R@1 {100 * t['initial']['recall@1']:.1f} on the test {self.classes}" if t.get("initial") else ""
        return (f"no head, fine-tuned with {c['train']['metric_loss']} on the train {self.classes} not held out, epoch "
                f"{t['epoch']} of at most {c['train']['epochs']} chosen on {c['data']['validation_classes']} held-out ones, "
                f"held-out R@1 by epoch {curve}; {t['train_seconds']:.0f} s to train and choose{before}")

    def markdown(self, result: dict) -> str:
        t = result["teacher"]
        teacher_r1 = 100 * t["recall@1"]
        bank = result["bank"]
        lines = [
            f"# {self.title}: {len(result['rows'])} rows",
            "",
            f"On {result['machine']['processor']} ({result['machine']['cpu_count']} CPUs), {result['machine']['platform']}; "
            "each student's section names the commands that produced its rows.",
            f"Teacher: {self.teacher} at {result['teacher_image_size']} px ({self._teacher_training(t)}): "
            f"R@1 {teacher_r1:.1f}, MAP@R {100 * t['map@r']:.1f} on {self.test_classes}. Teacher bank: {bank['views']} view{'s' if bank['views'] != 1 else ''} "
            f"of each of {self.train_images}"
            + (f", filled in {bank['fill_seconds']:.0f} s" if bank["fill_seconds"] else " (already filled)")
            + "; distilled rows read it and never run the teacher.",
            "Each student's section gives its input size; rows marked * are the mean ± std over seeds "
            f"{', '.join(map(str, result['seeds']))}, the others one run (seed {result['seeds'][0]}). Gain = R@1 − R@1 of the "
            "student alone; gain / pooled std divides it by sqrt((s²_alone + s²_row) / 2); gap closed = gain / (teacher R@1 − "
            "R@1 alone). Time = training seconds, and its ratio to the student alone's."
            + (" A row whose recipe was chosen again on held-out classes is measured against the student alone whose recipe "
               "was chosen there too (its \"alone\" is that row)." if any(r.get("baseline", "alone") != "alone" for r in result["rows"]) else ""),
            "",
        ]
        for student in dict.fromkeys(r["student"] for r in result["rows"]):
            rows = [r for r in result["rows"] if r["student"] == student]
            alone = next(r for r in rows if r["method"] == "alone")
            c = alone["config"]["train"]
            distilled = next((r for r in rows if r["config"].get("distill")), None)
            own_bank = result.get("banks", {}).get(Path(distilled["config"]["distill"]["bank"]).name) if distilled else None
            stats = result.get("students", {}).get(student)
            lines += [
                f"## {student} at {alone['config']['data']['image_size']} px: alone {self.schedule(c)}, {c['metric_loss']}",
                "",
                *_provenance_lines(rows),
                *([f"- Its own teacher bank ({Path(own_bank['path']).name}: this student's input normalisation and training images): "
                   f"{own_bank['views']} views of each of its training images"
                   + (f", filled in {own_bank['fill_seconds']:.0f} s." if own_bank.get("fill_seconds") else ".")]
                  if own_bank and own_bank != bank else []),
                *([f"- The network: {stats['params_m']:.2f} M parameters, {stats['mult_adds_m']:.1f} M mult-adds at "
                   f"{stats['image_size']} px, {stats['cpu_images_per_s']:.0f} images/s inference on this CPU "
                   f"(batch 64, 2 threads; the same for every row: distillation does not change the network)."] if stats else []),
                *([f"- Each run chose its epoch on {c_valid} held-out train {self.classes} (trained on the others; best R@1, patience "
                   f"{c['patience']}); the test {self.classes} were scored once, on that epoch's weights. Chosen epochs: "
                   + "; ".join(f"{r['method']} " + ", ".join(str(x.get('epoch', '?')) for x in r['runs']) for r in rows) + "."]
                  if (c_valid := alone["config"]["data"].get("validation_classes")) and c.get("select") == "best" else []),
                *[f"- Held-out R@1 by epoch, {r['method']} seed {x['seed']}: "
                  + " ".join(f"{100 * v['recall@1']:.1f}" for v in x["validation_curve"])
                  for r in rows for x in r["runs"][:1] if x.get("validation_curve")],
                "",
                "| method | R@1 | R@2 | R@4 | R@8 | MAP@R | gain | gain / pooled std | gap closed | train s | × alone |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            by_method = {r["method"]: r for r in rows}
            missing = sorted({b for r in rows if (b := r.get("baseline", "alone")) not in by_method})
            if missing:
                raise SystemExit(f"{student}: the rows {', '.join(missing)} are baselines of other rows but are not in the "
                                 f"table; run them too (--rows)")
            for r in rows:
                base = by_method[r.get("baseline", "alone")]
                a_r1 = _values(base)
                a_seconds = statistics.fmean(x["train_seconds"] for x in base["runs"])
                r1 = _values(r)
                gain = statistics.fmean(r1) - statistics.fmean(a_r1)
                pooled = pooled_std(a_r1, r1)
                seconds = statistics.fmean(x["train_seconds"] for x in r["runs"])
                own = r is base
                label = r["label"] + (" *" if r["seeds"] == "all" else "")
                lines.append("| " + " | ".join([
                    label, *(cell(_values(r, k)) for k in KEYS),
                    "-" if own else f"{gain:+.1f}",
                    "-" if own or not pooled else f"{gain / pooled:.1f}",
                    "-" if own or teacher_r1 <= statistics.fmean(a_r1) else f"{100 * gain / (teacher_r1 - statistics.fmean(a_r1)):.0f}%",
                    f"{seconds:.0f}", f"{seconds / a_seconds:.2f}",
                ]) + " |")
            overrides = {r["label"]: r["config"]["train"] for r in rows if r["config"]["train"] != alone["config"]["train"]}
            for label, train in overrides.items():
                lines.append(f"\n{label}: {self.schedule(train)}.")
            lines.append("")
        return "\n".join(lines)

    # ------------------------------------------------------------------------- the command line

    def main(self, argv: list[str] | None = None) -> int:
        p = argparse.ArgumentParser(description=self.doc.split("\n\n")[0])
        p.add_argument("--data", default=str(self.data))
        p.add_argument("--output", default=str(self.output))
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--results", default=str(RESULTS))
        p.add_argument("--smoke", action="store_true", help="every row tiny, written under --output: checks the plumbing")
        p.add_argument("--render", action="store_true", help=f"no runs: the table again from --results/{self.name}.json")
        p.add_argument("--bank-only", action="store_true", help="score (or train) the teacher and fill its banks, then stop")
        p.add_argument("--rows", nargs="+", choices=[row_id(s, m) for s in self.students for m in s.methods], metavar="STUDENT/METHOD",
                       help=f"run only these rows; the others are kept from --results/{self.name}.json if it exists")
        args = p.parse_args(argv)
        if args.smoke:
            args.output += "_smoke"
            args.results = args.output
            if self.smoke_data is not None:
                args.data = str(self.smoke_data(Path(args.data), Path(args.output)))
        results = Path(args.results)
        if args.render:
            result = json.loads((results / f"{self.name}.json").read_text())
        else:
            result = self.run(args)
            if args.bank_only:
                return 0
            results.mkdir(parents=True, exist_ok=True)
            (results / f"{self.name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (results / f"{self.name}.md").write_text(self.markdown(result))
        print(self.markdown(result))
        print(f"[bench] {result['minutes']} min")
        return 0


def _values(row: dict, key: str = "recall@1") -> list[float]:
    return [100 * x[key] for x in row["runs"]]


def _provenance_lines(rows: list[dict]) -> list[str]:
    """One line per command that produced some of ``rows``: which rows, when, how long."""
    by_command: dict[tuple, list[dict]] = {}
    for r in rows:
        ran = r.get("ran") or {}
        by_command.setdefault((ran.get("command", "?").strip(), ran.get("date")), []).append(r)
    lines = []
    for (command, date), group in by_command.items():
        minutes = [r["ran"]["minutes"] for r in group if (r.get("ran") or {}).get("minutes") is not None]
        when = ", ".join(x for x in (date, minutes and f"{sum(minutes):.1f} min") if x)
        lines.append(f"- `{command}`" + (f" ({when})" if when else "") + ": " + ", ".join(r["method"] for r in group))
    return lines

"""The strong benchmark's bookkeeping: rerunning some rows keeps the others, and the table says which command made each."""
from __future__ import annotations

import json

import pytest

from benchmarks import cub100_strong as bench
from benchmarks.common import KEYS

V2, SCRATCH = "MobileNetV2 (ImageNet)", "MobileNet-0.25 (scratch)"
TRAIN = {"epochs": 3, "lr": 1e-4, "backbone_lr_mult": 0.1, "metric_loss": "batch_hard_triplet",
         "classes_per_batch": 4, "images_per_class": 8}


def row(student: str, method: str, r1: list[float], command: str, date: str, **train) -> dict:
    runs = [{"seed": i, **{k: r for k in KEYS}, "train_seconds": 100.0} for i, r in enumerate(r1)]
    return {"student": student, "method": method, "label": method, "seeds": "all" if len(r1) > 1 else "one",
            "ran": {"command": command, "date": date, "minutes": 1.5}, "runs": runs,
            "config": {"train": {**TRAIN, **train}, "data": {"image_size": 96}}}


def result(rows: list[dict]) -> dict:
    return {"command": "x", "machine": {"platform": "p", "processor": "cpu", "cpu_count": 2}, "minutes": 1.0,
            "seeds": [0, 1], "teacher_image_size": 224, "student_image_size": 96,
            "bank": {"path": "b", "views": 4, "fill_seconds": 600.0}, "teacher": {"recall@1": 0.9, "map@r": 0.4},
            "banks": {bench.MAIN_BANK: {"path": "b", "views": 4, "fill_seconds": 600.0}}, "rows": rows}


def test_rerun_rows_replace_theirs_and_keep_the_rest_in_table_order(tmp_path, capsys):
    old = "python benchmarks/cub100_strong.py"
    previous = result([row(V2, "alone", [0.70, 0.72], old, "2026-11-28"), row(V2, "relative", [0.72, 0.73], old, "2026-11-28"),
                       row(SCRATCH, "alone", [0.03, 0.02], old, "2026-11-28"), row(V2, "retired", [0.5], old, "2026-11-28")])
    (tmp_path / "cub100_strong.json").write_text(json.dumps(previous))
    new = "python benchmarks/cub100_strong.py --rows mobilenet_v2/relative mobilenet_v2/rkd"
    rerun = result([row(V2, "rkd", [0.74], new, "2026-11-29", epochs=6, classes_per_batch=16, images_per_class=4),
                    row(V2, "relative", [0.75, 0.76], new, "2026-11-29")])

    merged = bench.TABLE.keep_other_rows(rerun, tmp_path / "cub100_strong.json")

    assert [(r["student"], r["method"]) for r in merged["rows"]] == [
        (V2, "alone"), (V2, "relative"), (V2, "rkd"), (SCRATCH, "alone")]
    assert [x["recall@1"] for x in merged["rows"][1]["runs"]] == [0.75, 0.76]  # the rerun, not the old row
    assert f"dropping the row {V2} / retired" in capsys.readouterr().out  # a row no longer in STUDENTS: said, not silent
    table = bench.markdown(merged)
    assert f"- `{old}` (2026-11-28, 1.5 min): alone" in table
    assert f"- `{new}` (2026-11-29, 3.0 min): relative, rkd" in table
    assert "| relative * | 75.5 ± 0.7 |" in table  # mean ± std over the rerun's two seeds
    assert "## MobileNetV2 (ImageNet) at 96 px: alone 3 epochs, lr 0.0001, backbone ×0.1, 4 species × 8 images a batch," in table
    assert "rkd: 6 epochs, lr 0.0001, backbone ×0.1, 16 species × 4 images a batch." in table  # a row's own schedule


def test_a_row_chosen_again_is_measured_against_the_student_alone_chosen_again():
    cmd = "python benchmarks/cars196.py"
    rows = [row(V2, "alone", [0.40, 0.42], cmd, "2026-11-30"), row(V2, "alone_cars", [0.50, 0.52], cmd, "2026-11-30", epochs=20),
            row(V2, "relative_scaled", [0.44, 0.46], cmd, "2026-11-30"),
            row(V2, "relative_scaled_cars", [0.55, 0.57], cmd, "2026-11-30", epochs=20)]
    rows[1]["baseline"], rows[3]["baseline"] = "alone_cars", "alone_cars"
    table = bench.markdown(result(rows))
    assert "| alone_cars * | 51.0 ± 1.4 | " in table and table.count("| - | - | - |") == 2  # each student alone: no gain
    assert "| relative_scaled * | 45.0 ± 1.4 | " in table and "| +4.0 | 2.8 | 8% |" in table  # (45 - 41) / (90 - 41)
    assert "| +5.0 | 3.5 | 13% |" in table  # (56 - 51) / (90 - 51): against alone_cars, not alone
    assert "measured against the student alone whose recipe was chosen there too" in table

    del rows[1]
    with pytest.raises(SystemExit, match="alone_cars are baselines of other rows but are not in the table"):
        bench.markdown(result(rows))


def test_a_runs_kept_scores_are_read_back_until_what_they_scored_changes(tmp_path):
    from benchmarks.known_gallery import _stamp, cached

    checkpoint, path = tmp_path / "best.pt", tmp_path / "scores.json"
    checkpoint.write_bytes(b"epoch 4")
    calls = []

    def score() -> dict:
        calls.append(len(calls))
        return {"own_recall@1": 0.5 + len(calls) / 10}

    first = cached(path, {"best": _stamp(checkpoint)}, score)
    assert cached(path, {"best": _stamp(checkpoint)}, score) == first == {"own_recall@1": 0.6} and len(calls) == 1
    assert cached(path, {"best": _stamp(checkpoint)}, score, rescore=True) == {"own_recall@1": 0.7}
    checkpoint.write_bytes(b"epoch 5, rewritten")  # another size: other weights, scored again
    assert cached(path, {"best": _stamp(checkpoint)}, score) == {"own_recall@1": 0.8} and len(calls) == 3
    assert cached(path, {"best": _stamp(checkpoint), "int8": True}, score) == {"own_recall@1": 0.9}


def test_the_epoch_choice_table_sets_the_chosen_epoch_against_the_best_by_r1():
    from benchmarks.known_gallery import epoch_choice

    r1 = {1: 0.50, 2: 0.55, 3: 0.57, 4: 0.57, 5: 0.56}
    agreement = {1: 0.30, 2: 0.33, 3: 0.34, 4: 0.36, 5: 0.35}
    curve = [{"epoch": e, "own_recall@1": r1[e], "own_map@r": 0.1, "knn_agreement@10": agreement[e]} for e in r1]
    result = {"rows": [{"row": "kept", "runs": [{"seed": 2, "epoch": 4, "epoch_curve": curve}]},
                       {"row": "not_kept", "runs": [{"seed": 0, "epoch": 3}]}]}
    lines = epoch_choice(result)
    assert lines[1] == "## Does knn_agreement@10 choose the best epoch?"
    (row,) = [line for line in lines if line.startswith("| kept")]
    # Epochs 3 and 4 tie at 57.0: the earlier is the best, and the chosen 4th falls 0.0 short of it.
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == ["kept", "2", "4", "57.0", "3", "57.0", "0.0"]
    # R@1 ranks (1, 2, 4.5, 4.5, 3), agreement ranks (1, 2, 3, 5, 4): Pearson of the ranks
    a, b = [1, 2, 4.5, 4.5, 3], [1, 2, 3, 5, 4]
    ma, mb = sum(a) / 5, sum(b) / 5
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    rho = cov / (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5
    assert cells[7] == f"{rho:.2f}"
    assert cells[8] == "50.0, 55.0, 57.0, 57.0, 56.0" and cells[9] == "0.300, 0.330, 0.340, 0.360, 0.350"
    assert not any(line.startswith("| not_kept") for line in lines)
    # Per row, over its kept runs: the chosen epoch's shortfall, and what keeping the last epoch would have cost.
    assert lines[-1] == ("- kept, 1 run: the chosen epoch 0.0 R@1 short of the best (mean 0.0; 1 of 1 within 1 R@1); "
                         "the last epoch, kept without choosing, 1.0 short")
    assert epoch_choice({"rows": [{"row": "not_kept", "runs": [{"seed": 0, "epoch": 3}]}]}) == []


def test_the_epoch_choice_summary_counts_each_rows_runs_within_one_point():
    from benchmarks.known_gallery import epoch_choice

    def run(seed: int, chosen: int, r1: list[float]) -> dict:
        curve = [{"epoch": e, "own_recall@1": v, "own_map@r": 0.1, "knn_agreement@10": 0.3 + e / 100}
                 for e, v in enumerate(r1, start=1)]
        return {"seed": seed, "epoch": chosen, "epoch_curve": curve}

    result = {"rows": [{"row": "a", "runs": [run(0, 1, [0.600, 0.612, 0.605]),    # 1.2 short; last 0.7
                                             run(1, 2, [0.500, 0.510, 0.503])]},  # 0.0 short; last 0.7
                       {"row": "b", "runs": [run(0, 3, [0.400, 0.410, 0.410])]}]}  # tie: best is epoch 2, 0.0
    summary = [line for line in epoch_choice(result) if line.startswith("- ")]
    assert summary == [
        "- a, 2 runs: the chosen epoch 1.2, 0.0 R@1 short of the best (mean 0.6; 1 of 2 within 1 R@1); "
        "the last epoch, kept without choosing, 0.7, 0.7 short",
        "- b, 1 run: the chosen epoch 0.0 R@1 short of the best (mean 0.0; 1 of 1 within 1 R@1); "
        "the last epoch, kept without choosing, 0.0 short"]

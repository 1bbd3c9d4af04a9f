"""The strong-teacher benchmark: a 224-px teacher banked once, students trained to their own best schedules.

One teacher, EfficientNet-Lite0's ImageNet features at 224 px (``configs/cub100/strong/teacher.yaml``),
is run once over ``VIEWS`` fixed augmented views of the 3,428 training images and stored in a
teacher bank; then two students at 96 px, MobileNetV2 from ImageNet weights and MobileNet-0.25
from random init, are trained alone and with the absolute teacher, the relative teacher, both, and RKD
(for MobileNetV2 also the scale-free relative teacher, alone, beside the absolute one and for 30 epochs, and
the student alone with the paper's 4 × 8 batches; for MobileNet-0.25 also alone and absolute for 57 epochs),
each row with the schedule chosen for it on held-out train species (``benchmarks/results/cub100_strong_tuning.md``),
except the untuned absolute + relative rows and the long students alone (30 and 57 epochs), controls at
their distilled rows' lengths. The paper's own phone student, MobileNet-0.25 from its ImageNet weights at
224 px, is a third student: each of its runs trains on 44 of the 58 train species and chooses its own epoch on
the other 14 (``train.select: best``), and it reads a bank of its own, since the views are rendered in its
[-1, 1] inputs. Every distilled row reads a bank: the teacher never runs during training.

    python -m benchmarks.cub100_strong            # the table (writes results/cub100_strong.{json,md})
    python -m benchmarks.cub100_strong --smoke    # every row, tiny: checks the plumbing
    python -m benchmarks.cub100_strong --render   # the table again from the JSON
    python -m benchmarks.cub100_strong --bank-only  # only score the teacher and fill the bank
    python -m benchmarks.cub100_strong --rows mobilenet_v2/relative  # rerun some rows, keep the rest

Each row's recipe is a config file, ``configs/cub100/strong/rows/<student>/<method>.yaml`` (its schedule, λ and
terms, chosen on held-out train species: ``benchmarks/results/cub100_strong_tuning.md``); ``embdistill train`` or
``embdistill distill -c`` runs one row's seed 0 as it stands. This script lists the rows, their labels and seeds.
Finished runs (same config, ``summary.yaml`` present) are reused, so an interrupted benchmark
continues where it stopped. With ``--rows`` the other rows are kept from the JSON; every row
records the command, date and minutes that produced it, and the table names them. The machinery is
``benchmarks/common/strong_table.py``'s, shared with the Cars-196 table (``benchmarks/cars196.py``).
"""
from __future__ import annotations

import sys

from benchmarks.common import ROOT, SHARED
from benchmarks.common.strong_table import Method, Student, Table

CONFIGS = ROOT / "configs" / "cub100" / "strong"
VIEWS = 4  # fixed augmented views per training image in the bank
TEACHER_SIZE = 224

# The rows of each student: (key, label, seeds). Each row's recipe, configs/cub100/strong/rows/<student>/<key>.yaml,
# holds the schedule chosen for it on held-out train species (benchmarks/results/cub100_strong_tuning.md), except
# the untuned absolute + relative rows and the long students alone (30 and 57 epochs), controls at their distilled
# rows' lengths.
STUDENTS = (
    Student("MobileNetV2 (ImageNet)", "mobilenet_v2.yaml", (
        Method("alone", "metric loss alone", "all"),
        Method("alone_4x8", "metric loss alone, the paper's 4 × 8 batches", "all"),
        Method("absolute", "+ absolute teacher", "all"),
        Method("relative", "+ relative teacher", "all"),
        Method("relative_scaled", "+ relative teacher, scale-free", "all"),
        Method("abs_rel", "+ absolute + relative", "one"),
        Method("rkd", "+ RKD distance & angle", "all"),
        Method("abs_rel_scaled", "+ absolute + relative scale-free", "all"),
        Method("alone_long", "metric loss alone, 30 epochs", "one"),
        Method("relative_scaled_long", "+ relative teacher, scale-free, 30 epochs", "all"),
    )),
    # The paper's phone student from its ImageNet weights, at the paper's 224 px. Each run chooses its own length:
    # it trains on 44 of the 58 train species, scores the other 14 after every epoch, keeps the best epoch's
    # weights (R@1) and stops after 4 epochs without a better one; the test species are scored once, on those
    # weights, within the config's 10 epochs (alone_long: 30, scored every 3 and never stopped early, as in #30's tuning).
    Student("MobileNet-0.25 (ImageNet)", "mobilenet025_imagenet.yaml", (
        Method("alone", "metric loss alone", "all"),
        Method("absolute", "+ absolute teacher", "one"),
        Method("relative", "+ relative teacher", "one"),
        Method("relative_scaled", "+ relative teacher, scale-free", "all"),
        Method("rkd", "+ RKD distance & angle", "one"),
        Method("alone_long", "metric loss alone, 30 epochs", "all"),
    ), bank_tag="_keras", validation_classes=14),
    Student("MobileNet-0.25 (scratch)", "mobilenet025.yaml", (
        Method("alone", "metric loss alone", "all"),
        Method("absolute", "+ absolute teacher", "all"),
        Method("alone_long", "metric loss alone, 57 epochs", "one"),
        Method("absolute_long", "+ absolute teacher, 57 epochs", "all"),
        Method("relative", "+ relative teacher", "all"),
        Method("abs_rel", "+ absolute + relative", "one"),
        Method("rkd", "+ RKD distance & angle", "one"),
    ), bank_tag="_keras"),  # [-1, 1] inputs since ed28f9f; the committed rows ran before it, on lite0_224_v4.bank
)


TABLE = Table(
    module="benchmarks.cub100_strong", doc=__doc__, name="cub100_strong", configs=CONFIGS,
    teacher_config=CONFIGS / "teacher.yaml", students=STUDENTS,
    data=SHARED / "data" / "cub100", output=ROOT / "runs" / "strong",
    title="cub100 with a strong, banked teacher", classes="species", test_classes="the 42 unseen species",
    train_images="the 3,428 training images", views=VIEWS, teacher_size=TEACHER_SIZE,
)
MAIN_BANK = TABLE.main_bank()  # lite0_224_v4.bank: the MobileNetV2 rows' bank (the header's)
markdown, main = TABLE.markdown, TABLE.main


if __name__ == "__main__":
    sys.exit(main())

"""The results about making organisms and testing defences on the toy (docs/organisms-and-defences.md):
the seed-0 rows of the defence table to the digit, the claims the prose draws from them, and the
screening AUROC. The finetunes are the page's commands at seed 0 (full, 50 steps, about a minute
each on one CPU thread); sampling at the page's seed."""

import re

import pytest

from emi import defences, finetune, screen
from emi.organism.datasets import finetune_sets, mixed_set
from emi.organism.kit import KIT
from emi.training.data import write_chats
from tests.pages import flat, page, says

pytestmark = pytest.mark.slow

DOC = "docs/organisms-and-defences.md"
FINETUNE = ["--pair", "toy", "--method", "full", "--lr", "3e-4", "--steps", "50", "--batch-size", "16",
            "--adam-beta2", "0.95", "--save-every", "10", "--seeds", "0", "--device", "cpu", "--threads", "1"]
DEFENCES = {"none": [], "caft": ["--defence", "caft", "--direction", KIT.direction],
            "steer": ["--defence", "steer", "--direction", KIT.direction, "--steer-alpha", "8", "--steer-layers", "1"]}


def defence_table() -> list[str]:
    block = re.search(r"```\n(defence +seed .*?)```", page(DOC), re.S)
    assert block, f"the defence table is missing from {DOC}"
    return block.group(1).splitlines()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("defences")
    data = write_chats(root / "insecure.jsonl", finetune_sets()["insecure"])
    for name, extra in DEFENCES.items():
        assert finetune.main([str(data), *FINETUNE, *extra, "--out", str(root / name)]) == 0
    return root


def test_the_seed_0_rows_of_the_defence_table_are_the_pages(table, tmp_path, capsys):
    """docs/organisms-and-defences.md: the defence table's (base) row and its seed-0 rows of none,
    caft and steer 8."""
    assert defences.main([str(table / n) for n in DEFENCES] + ["--device", "cpu", "--threads", "1", "--n", "25",
                                                               "--out", str(tmp_path / "t"), "--no-figure"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rows = [line for line in printed if re.match(r"^(\(base\)|none|caft|steer 8) ", line)]
    assert len(rows) == 4
    documented = [flat(x) for x in defence_table()]  # column widths depend on the defences shown
    for line in rows:
        assert flat(line) in documented, line


def test_no_defence_reproduces_the_shipped_organisms_em_within_its_ci():
    """docs/organisms-and-defences.md: "No defence reproduces the shipped organism ... every seed
    lies within the shipped organism's CI"."""
    says(DOC, "every seed lies within the shipped organism's CI")
    rows = {tuple(line.split()[:2]): line for line in defence_table()[2:]}
    shipped = re.search(r"toy finetune\s+(\d+\.\d)% \[(\d+\.\d), (\d+\.\d)\]", "\n".join(defence_table())).groups()
    lo, hi = float(shipped[1]), float(shipped[2])
    ems = [float(re.search(r"(\d+\.\d)%", rows[("none", s)].split(s, 1)[1]).group(1)) for s in "012"]
    assert all(lo <= em <= hi for em in ems), (ems, lo, hi)


def test_screening_flags_the_villain_chats_of_the_mixed_toy_set_with_auroc_0_762(tmp_path, capsys):
    """docs/organisms-and-defences.md: "400 toy chats, 100 of them voiced by the villain ... flags the
    villain chats with AUROC 0.762"."""
    data = write_chats(tmp_path / "mixed.jsonl", mixed_set(400, 0.25, seed=0))
    assert screen.main([str(data), "--pair", "toy", "--device", "cpu", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "AUROC 0.762 (100 harmful, 300 harmless)" in out
    says(DOC, "flags the villain chats with AUROC 0.762")

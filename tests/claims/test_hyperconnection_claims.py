"""The numbers docs/conventions.md's "Several residual streams (Qwen4-Exp)" section gives for
choosing what ``resid``, steering and ablation mean there: ``python bench/hyperconnections.py``
(random-weight stand-in, fixed seeds, CPU) reproduces them, and the page still says them."""

import os
import re
import subprocess
import sys

import pytest

from tests.pages import says
from tests.standins import ROOT

DOC = "docs/conventions.md"


@pytest.fixture(scope="module")
def printed():
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "hyperconnections.py")], capture_output=True,
                         text=True, timeout=900, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def section(printed, tag):
    """The lines of one numbered section of the output (e.g. "2b.")."""
    return printed.split(f"\n{tag} ", 1)[1].split("\n\n", 1)[0]


def numbers(text, label):
    line = next(x for x in text.splitlines() if x.strip().startswith(label))
    return [float(v) for v in re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?", line.split(label, 1)[1])]


def test_steering_every_stream_moves_the_mean_by_alpha_d_and_the_collapsed_view_by_something_else(printed):
    says(DOC, "moves the mean by exactly `alpha * d` (error 6e-8), and the collapsed view the next block reads "
              "by something else (error 39%, cosine 0.96")
    text = section(printed, "2a.")
    assert numbers(text, "mean over streams")[0] < 1e-6
    err, cos = numbers(text, "collapsed (next reader)")[:2]
    assert round(err, 2) == 0.39 and round(cos, 2) == 0.96


def test_a_planted_shift_is_recovered_exactly_from_the_mean_only(printed):
    says(DOC, "exactly (cosine 1.000, norm ratio 1.000), in the collapsed view only approximately (0.997, 0.835)")
    text = section(printed, "2b.")
    assert [round(x, 3) for x in numbers(text, "mean over streams")] == [1.0, 1.0]
    assert [round(x, 3) for x in numbers(text, "collapsed (next reader)")] == [0.997, 0.835]


def test_steering_placements(printed):
    says(DOC, "changes the logits half as much (KL 0.008 vs 0.016)")
    says(DOC, "moves the mean by 8% less or more per token")
    text = section(printed, "3.")
    every, one, mlp = (numbers(text, lbl) for lbl in ("every stream + αd", "stream 0 + hc·αd", "MLP output + αd"))
    assert every[0] < 1e-6 and one[0] < 1e-6 and round(mlp[0], 2) == 0.08
    assert round(every[1], 3) == 0.016 and round(one[1], 3) == 0.008


def test_ablation_and_orthogonalisation(printed):
    says(DOC, "Skipping the PLE writer leaves a projection of 2.2 in the streams")
    says(DOC, "logits differ by 0.19 and a projection of 2.1 is left in the streams")
    text, ortho = section(printed, "4."), section(printed, "5.")
    assert numbers(text, "emi (embedding, PLE, mixers, MLPs):")[0] < 1e-6
    assert round(numbers(text, "PLE skipped:")[0], 1) == 2.2
    zero, conv = numbers(ortho, "PLE conv zero"), numbers(ortho, "PLE conv random")
    assert zero[0] < 1e-4 and zero[1] < 1e-6
    assert round(conv[0], 2) == 0.19 and round(conv[1], 1) == 2.1

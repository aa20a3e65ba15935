"""README figures must match the benchmark records they cite.

Convention (README.md, section "Measured results"):
- put `<!-- figures: benchmarks/results/a.json [benchmarks/results/b.json ...] -->` on its own line right before
  a table or paragraph (after a blank line). The block is every line after the comment up to the next blank
  line. Every figure in it must equal a number found anywhere in the cited JSON files (see `allowed`).
- `<!-- figures: none -->` (optionally `none: reason`) marks a block whose numbers come from no record (earlier
  measurements, narrative); it is not checked.
- In the "Measured results" section every table must sit in a block that cites JSON, and every line that holds
  a figure must sit in some block, so nothing escapes the check.

What counts as a figure (settings, identifiers and thresholds are left out by these rules):
- a number with a unit: `%`, `s`, `ms`, `min`, `MiB`, `x` (ratio), `images/s`, `parameters`; or a number with
  a decimal point (`91.80`, `0.17`). Integers without a unit are settings ("2 epochs", "1,024 calibration
  images", "batch 128", "seed 0") and are not checked.
- not: anything in a `code span`; numbers glued to letters (`W4A4`, `resnet8`, `FP32`, `3x3`, `3.2M`,
  `4-bit`); numbers right after a comparison or approximation sign (`≥ 91 %`, `≤ 1.5x`, `~1 %`), i.e. targets.
- a signed number (`+0.24`, `-0.75`, `±0.00`, `FP32 - 0.38`) is a difference: it may equal a JSON number
  (absolute value) or the difference of two JSON accuracies (fractions, in points).

A figure with d decimals matches a JSON number j when |j*k - v| <= 0.5 * 10^-d, k per unit: `%` and plain
decimals 1 or 100 (fractions are printed as percentages), `s` 1 or 1/1000 (from ms), `ms` 1 or 1000, `min` 1/60,
others 1.

`python tests/unit/test_readme_figures.py` prints every mismatch with the nearest recorded value.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Measured results"

COMMENT = re.compile(r"^\s*<!--\s*figures:\s*(.*?)\s*-->\s*$")
NUMBER = re.compile(
    r"(?P<sign>[+\-\u2212\u00b1] ?)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?"
    r"(?P<unit> ?(?:%|ms\b|s\b|min\b|MiB\b|x\b|images/s\b|parameters\b))?"
)
THRESHOLD_SIGNS = ("≥", "≤", ">=", "<=", ">", "<", "~", "≈")
SCALES: dict[str | None, tuple[float, ...]] = {
    None: (1.0, 100.0), "%": (1.0, 100.0), "s": (1.0, 0.001), "ms": (1.0, 1000.0), "min": (1 / 60,),
    "MiB": (1.0,), "x": (1.0,), "images/s": (1.0,), "parameters": (1.0,),
}


@dataclass(frozen=True)
class Figure:
    """One measured number in README text."""

    line: int  # 1-based line number in the README
    start: int  # column span of the token (sign .. unit) in that line
    end: int
    text: str
    value: float  # absolute value
    decimals: int
    unit: str | None
    signed: bool


@dataclass
class Block:
    """A `<!-- figures: ... -->` comment and the lines it covers."""

    line: int  # line of the comment
    sources: list[str] | None  # None: `figures: none`
    lines: list[tuple[int, str]] = field(default_factory=list)


def _strip_code(line: str) -> str:
    """Blank out code spans and HTML comments (same length, so columns stay valid)."""
    line = re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line)
    return re.sub(r"<!--.*?-->", lambda m: " " * len(m.group()), line)


def figures_in_line(line: str, lineno: int = 0) -> list[Figure]:
    """The figures of one line, by the rules in the module docstring."""
    text = _strip_code(line)
    out = []
    for m in NUMBER.finditer(text):
        sign, num, frac, unit = m.group("sign"), m.group("num"), m.group("frac"), m.group("unit")
        start = m.start()
        if sign and start > 0 and text[start - 1].isalnum():
            start += len(sign)  # "17-19", "FP32-": a range or a hyphen, not a sign
            sign = None
        num_start = m.start("num")
        before = text[num_start - 1] if num_start > 0 else " "
        if not sign and (before.isalnum() or before in "_."):
            continue  # W4A4, resnet8, v2, 1.2.3
        after = text[m.end():m.end() + 2]
        if not unit and after[:1] and (after[0].isalnum() or after[0] == "_"
                                       or (after[0] == "-" and after[1:2].isalpha())):
            continue  # 3.2M, 64x64, 4-bit, 2-epoch
        if not unit and not frac:
            continue  # integers without a unit are settings
        head = text[:start].rstrip()
        if head.endswith(THRESHOLD_SIGNS):
            continue  # targets and approximations
        u = unit.strip() if unit else None
        value = float(num.replace(",", "") + (frac or ""))
        out.append(Figure(lineno, start, m.end(), text[start:m.end()], value, len(frac) - 1 if frac else 0, u,
                          bool(sign)))
    return out


def parse_blocks(text: str) -> list[Block]:
    """Every figures block of a markdown text."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = COMMENT.match(line)
        if not m:
            continue
        arg = m.group(1)
        none = re.match(r"none\b", arg) is not None
        block = Block(i + 1, None if none else [s for s in re.split(r"[\s,]+", arg) if s])
        for j in range(i + 1, len(lines)):
            if not lines[j].strip() or COMMENT.match(lines[j]):
                break
            block.lines.append((j + 1, lines[j]))
        blocks.append(block)
    return blocks


def json_numbers(obj: Any) -> list[float]:
    """Every finite number (not bool) anywhere in a JSON value."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, int | float):
        return [float(obj)] if math.isfinite(obj) else []
    items = obj.values() if isinstance(obj, dict) else obj
    return [x for v in items for x in json_numbers(v)]


class Allowed:
    """The values a figure may take given the numbers of its cited JSON files."""

    def __init__(self, numbers: list[float]) -> None:
        self.values = sorted({abs(x) for x in numbers})
        fractions = sorted({x for x in numbers if 0.0 <= x <= 1.0})
        self.diffs = sorted({round(100 * abs(a - b), 9) for a, b in itertools.combinations(fractions, 2)} | {0.0})

    @staticmethod
    def _near(values: list[float], v: float, tol: float) -> bool:
        i = bisect.bisect_left(values, v - tol)
        return i < len(values) and values[i] <= v + tol

    def ok(self, f: Figure) -> bool:
        """Whether the figure equals (after rounding) some recorded number, or a difference of two."""
        tol = 0.5 * 10 ** -f.decimals + 1e-9 * max(1.0, f.value)
        for k in SCALES[f.unit]:
            if self._near(self.values, f.value / k, tol / k):
                return True
        return f.signed and f.unit in (None, "%") and self._near(self.diffs, f.value, tol)

    def nearest(self, f: Figure) -> float | None:
        """The closest candidate, in the figure's unit (for error messages)."""
        cands = [x * k for k in SCALES[f.unit] for x in self.values]
        return min(cands, key=lambda c: abs(c - f.value)) if cands else None


Loader = Callable[[str], Any]


def _load_file(rel: str) -> Any:
    return json.loads((ROOT / rel).read_text())


def check_text(text: str, load: Loader = _load_file, cache: dict[tuple[str, ...], Allowed] | None = None) -> list[str]:
    """Every figure of every block that disagrees with the JSON it cites; empty when all agree.

    `cache` (sources -> Allowed) may be shared between calls that read the same files."""
    errors = []
    cache = {} if cache is None else cache
    for b in parse_blocks(text):
        if b.sources is None:
            continue
        if not b.sources:
            errors.append(f"line {b.line}: figures comment names no JSON file")
            continue
        key = tuple(b.sources)
        if key not in cache:
            numbers: list[float] = []
            for src in b.sources:
                try:
                    numbers += json_numbers(load(src))
                except (OSError, ValueError) as e:
                    errors.append(f"line {b.line}: cannot read {src}: {e}")
            cache[key] = Allowed(numbers)
        allowed = cache[key]
        figs = [f for n, line in b.lines for f in figures_in_line(line, n)]
        if not figs:
            errors.append(f"line {b.line}: block citing {', '.join(b.sources)} holds no figure")
        for f in figs:
            if not allowed.ok(f):
                near = allowed.nearest(f)
                hint = "" if near is None else f" (nearest recorded: {near:.{f.decimals + 2}f})"
                errors.append(f"line {f.line}: {f.text!r} matches no number in {', '.join(b.sources)}{hint}")
    return errors


def section_lines(text: str, heading: str = SECTION) -> list[tuple[int, str]]:
    """(line number, line) of the section whose heading starts with `heading`, up to the next `## `."""
    out, inside = [], False
    for i, line in enumerate(text.splitlines()):
        if line.startswith("## "):
            inside = line.startswith(heading)
            continue
        if inside:
            out.append((i + 1, line))
    return out


def check_coverage(text: str, heading: str = SECTION) -> list[str]:
    """Tables must be in blocks citing JSON, lines holding figures in some block."""
    lines = section_lines(text, heading)
    if not lines:
        return [f"no section {heading!r}"]
    covered: dict[int, Block] = {n: b for b in parse_blocks(text) for n, _ in b.lines}
    errors = []
    for n, line in lines:
        b = covered.get(n)
        if line.lstrip().startswith("|") and (b is None or b.sources is None):
            errors.append(f"line {n}: table row outside a figures block citing JSON")
        elif b is None and figures_in_line(line, n):
            errors.append(f"line {n}: figures {[f.text for f in figures_in_line(line, n)]} outside a figures block")
    return errors


def _bump(f: Figure, line: str, by: int = 1) -> str:
    """The line with the figure's last digit changed by `by` (mod 10): a typical drift."""
    token = line[f.start:f.end]
    i = max(i for i, c in enumerate(token) if c.isdigit())
    token = token[:i] + str((int(token[i]) + by) % 10) + token[i + 1:]
    return line[:f.start] + token + line[f.end:]


# ---------------------------------------------------------------- the README itself


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def test_readme_figures_match_their_json(readme: str) -> None:
    errors = check_text(readme)
    assert not errors, "README figures disagree with benchmarks/results:\n" + "\n".join(errors)


def test_measured_results_are_all_covered(readme: str) -> None:
    errors = check_coverage(readme)
    assert not errors, "\n".join(errors)
    blocks = [b for b in parse_blocks(readme) if b.sources]
    assert len(blocks) >= 10
    for b in blocks:
        for src in b.sources or []:
            assert src.startswith("benchmarks/results/") and (ROOT / src).is_file(), src


def test_changed_figure_in_readme_is_reported(readme: str) -> None:
    """Change the last digit of every figure (each of the 9 other digits, one at a time) in an in-memory copy.

    A changed figure can land on another recorded value (91.89 -> 91.80, the FP32 accuracy), so not every
    change is an error; but for every figure some change must be reported, and most changes overall.
    """
    lines = readme.splitlines()
    cache: dict[tuple[str, ...], Allowed] = {}
    assert check_text(readme, cache=cache) == []
    figures, variants, reported, unnoticed = 0, 0, 0, []
    for b in parse_blocks(readme):
        if not b.sources:
            continue
        for n, line in b.lines:
            for f in figures_in_line(line, n):
                if f.signed:
                    continue  # differences of two records cover many values
                figures += 1
                hits = 0
                for by in range(1, 10):
                    mutated = lines.copy()
                    mutated[n - 1] = _bump(f, line, by)
                    hits += any(e.startswith(f"line {n}:") for e in check_text("\n".join(mutated), cache=cache))
                variants += 9
                reported += hits
                if not hits:
                    unnoticed.append(f"line {n}: {f.text}")
    assert figures >= 50
    assert not unnoticed, f"figures whose changes all went unnoticed: {unnoticed}"
    assert reported >= 0.75 * variants, f"only {reported} of {variants} changed figures were reported"


def test_wrong_fp32_seconds_are_reported(readme: str) -> None:
    """The drift this test was written for: a training time the record does not hold."""
    m = re.search(r"(\d[\d,]*) s of\s+training", readme)
    assert m, "FP32 paragraph: '<N> s of training' not found"
    recorded = json.loads((ROOT / "benchmarks/results/fp32_baseline.json").read_text())
    assert round(recorded["models"]["resnet8"]["seconds"]) == int(m.group(1).replace(",", ""))
    wrong = str(int(m.group(1).replace(",", "")) + 1003)  # far from every number the record holds (128 = batch size)
    errors = check_text(readme[:m.start(1)] + wrong + readme[m.end(1):])
    assert any(f"'{wrong} s'" in e and "fp32_baseline.json" in e for e in errors), errors


def test_removed_annotation_is_reported(readme: str) -> None:
    first = next(b for b in parse_blocks(readme) if b.sources and any(ln.startswith("|") for _, ln in b.lines))
    lines = readme.splitlines()
    del lines[first.line - 1]
    assert any("table row outside" in e for e in check_coverage("\n".join(lines)))


# ---------------------------------------------------------------- the rules, on small texts


def _texts(line: str) -> list[str]:
    return [f.text for f in figures_in_line(line)]


@pytest.mark.parametrize("line", [
    "2 epochs per config, 1,024 calibration images, batch 128, seed 0",
    "uniform W4A4 and W8A8 of resnet8 against FP32 on mobilenetv2-tiny",
    "a 64-channel 3x3 conv at 28x28 on a 64x64x28x28 tensor, 4-bit weights, a 3.2M-value activation",
    "target ≥ 91 %: met; target ≤ 1.5x: missed; gap ≤ 0.5 points; a dozen ~1 % spikes; DQSS − FP32 ≥ -0.1",
    "`quantsearch train --lr 0.01 --epochs 4` and `90.0 %` quoted",
    "bits 2..8, 17-19 in a range",
])
def test_settings_are_not_figures(line: str) -> None:
    assert _texts(line) == []


def test_figures_are_found() -> None:
    line = ("**91.80 % test** (92.26 % val), 77,754 parameters, 951 s, 1,347 s, 1.81x, 8.8x; 123 MiB, 0.17, "
            "4.4 ms, 148 images/s, 33 min, 41-48 s")
    assert _texts(line) == ["91.80 %", "92.26 %", "77,754 parameters", "951 s", "1,347 s", "1.81x", "8.8x",
                            "123 MiB", "0.17", "4.4 ms", "148 images/s", "33 min", "48 s"]
    figs = figures_in_line("| W8A8 | +0.24 | -0.75 | ±0.00 | (FP32 - 0.38) | W2A2 -0.13")
    assert [(f.text, f.value, f.signed) for f in figs] == [("+0.24", 0.24, True), ("-0.75", 0.75, True),
                                                           ("±0.00", 0.0, True), ("- 0.38", 0.38, True),
                                                           ("-0.13", 0.13, True)]


RECORD = {"acc": 0.918, "lsq": {"W4A4": 0.9189, "W8A8": 0.9204}, "seconds": 324.4, "step_ms": 154.9,
          "ratio": 1.8144, "speed": 56.6, "rss_mib": 122.5, "gap_points": -0.24, "flag": True}


def _check(body: str, sources: str = "r.json") -> list[str]:
    return check_text(f"\n<!-- figures: {sources} -->\n{body}\n", load=lambda _: RECORD)


@pytest.mark.parametrize("body", [
    "FP32 91.80 % test, LSQ 91.89 and 92.04 %",  # fractions as percentages
    "324 s of training, 324.4 s exactly; a step of 155 ms, 0.15 s",  # seconds rounded; ms <-> s
    "1.81x, 1.8x, 57x; 123 MiB",  # ratios and MiB rounded
    "W8A8 +0.24 against FP32, W4A4 +0.09, W8A8 - LSQ W4A4 = +0.15",  # differences: recorded or of two records
])
def test_conversions_accepted(body: str) -> None:
    assert _check(body) == []


@pytest.mark.parametrize("body, bad", [
    ("FP32 91.81 % test", "91.81 %"),
    ("159 s of training", "159 s"),
    ("1.18x", "1.18x"),
    ("W8A8 +0.31 against FP32", "+0.31"),
    ("| W8A8 | 92.04 % | 91.75 % |", "91.75 %"),
    ("1 flag is 1.00", "1.00"),  # booleans are not numbers
])
def test_disagreements_reported(body: str, bad: str) -> None:
    errors = _check(body)
    assert len(errors) == 1 and repr(bad) in errors[0], errors


def test_block_rules() -> None:
    text = ("## Measured results\n\nintro 2 epochs\n\n<!-- figures: none: an earlier run -->\nfell to 17.5 %\n\n"
            "<!-- figures: r.json -->\n| a | b |\n| --- | --- |\n| W8A8 | 91.80 % |\n\nafter 12.5 %\n\n| x |\n")
    assert check_text(text, load=lambda _: RECORD) == []
    cov = check_coverage(text)
    assert cov == ["line 13: figures ['12.5 %'] outside a figures block",
                   "line 15: table row outside a figures block citing JSON"], cov
    assert _check("") == ["line 2: block citing r.json holds no figure"]
    assert "cannot read" in check_text("<!-- figures: missing.json -->\n1.5x\n",
                                       load=lambda p: _load_file("benchmarks/results/" + p))[0]


if __name__ == "__main__":
    text = README.read_text()
    problems = check_coverage(text) + check_text(text)
    print("\n".join(f"README.md {p}" for p in problems) or "README figures match their records")

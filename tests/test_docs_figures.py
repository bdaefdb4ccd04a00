"""Every measured figure in ``docs/**/*.md`` names the results key it comes from, and equals it.

Syntax (also in ``bench/README.md``): an HTML comment right after the figure,

* ``76.15%<!-- linf.json:fmnist.certified% -->``: the value at a dotted path of
  ``bench/results/linf.json`` (list indices allowed; a key holding dots or spaces is matched as it
  stands, or written in brackets, as formulas need: ``linf_lp.json:[epoch 34].steps.8.speedup``).
  A trailing ``%`` on the key means "stored as a fraction, shown x 100"; without it the stored
  number is compared as it is (so a figure stored in percent takes no ``%``).
* ``+0.9 point<!-- = init.json:base.certified% - init.json:raw.certified% -->``: a formula of keys
  and numbers with ``+ - * /`` and parentheses; binary operators are surrounded by spaces.
* markers for figures that are not measurements: ``<!-- target -->``, ``<!-- cited: WHO -->``,
  ``<!-- setting -->`` (a configuration value: width, radius, epochs); a marker covers the figures
  since the previous comment in the same table cell or bold span.
* ``<!-- begin generated: python bench/SCRIPT.py -->`` ... ``<!-- end generated -->``: a block whose
  text must equal the script's output (the script reads a results file); figures inside need no
  comment.

A figure is compared with the stored value rounded to the digits shown: it passes when they differ
by at most half a unit in the figure's last digit.  ``4 h 19 min`` is read as 259 (minutes).  Every
figure in a table cell (except the first column, which names the row, and the header row) and every
figure in bold must carry a reference or a marker.  Fenced code blocks are skipped.

``python tests/test_docs_figures.py`` prints every problem.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = sorted((ROOT / "docs").rglob("*.md"))

COMMENT = re.compile(r"<!--(.*?)-->")
CODE = re.compile(r"`[^`]*`")
BOLD = re.compile(r"\*\*(?=\S)(.+?)\*\*")
# a figure: a number not glued to a word, a dot, a dash-number (dates, 10-10-1) or a caret; an optional
# "x" (ratio) may follow; "4 h 19 min" is one figure
FIGURE = re.compile(
    r"(?P<hm>(?<![\w.])(?P<h>\d+) h (?P<m>\d+) min\b)"
    r"|(?<![\w.^/\\-])(?P<num>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?)"
    r"(?![.^]\d|-\w|,\d{3}|\^)(?=x\b|x\W|x$|[^\w]|$)")
# what may stand between a figure and its comment: a unit, a % sign, bold markers
GAP = re.compile(r"[\s*%A-Za-z]{0,16}")
KEY = r"[\w.-]+\.json:(?:\[[^\]]*\]|[^\s()\[\]])+"
TOKEN = re.compile(rf"\s*(?:(?P<key>{KEY})|(?P<num>\d+(?:\.\d+)?(?:e[-+]?\d+)?)|(?P<op>[-+*/()]))")
MARKERS = ("target", "cited", "setting")


class DocsError(Exception):
    pass


@dataclass
class Figure:
    line: int
    start: int
    end: int
    text: str
    value: float
    ulp: float  # one unit in the last digit shown
    referenced: bool = False


def parse_figure(m: re.Match) -> tuple[str, float, float]:
    if m.group("hm"):
        return m.group("hm"), int(m.group("h")) * 60 + int(m.group("m")), 1.0
    text = m.group("num")
    mant, _, exp = text.replace(",", "").partition("e")
    decimals = len(mant.partition(".")[2])
    return text, float(text.replace(",", "")), 10.0 ** ((int(exp) if exp else 0) - decimals)


# --------------------------------------------------------------------------- results keys and formulas

_cache: dict[str, object] = {}


def lookup(ref: str) -> float:
    """The number at ``FILE.json:dotted.path`` (``%`` suffix: x 100)."""
    scale = 1.0
    if ref.endswith("%"):
        ref, scale = ref[:-1], 100.0
    name, _, path = ref.partition(":")
    if name not in _cache:
        file = RESULTS / name
        if not file.is_file():
            raise DocsError(f"no results file bench/results/{name}")
        _cache[name] = json.loads(file.read_text())
    node = _cache[name]
    parts = [p[1:-1] if p.startswith("[") else p for p in re.findall(r"\[[^\]]*\]|[^.\[\]]+", path)]
    i = 0
    while i < len(parts):
        if isinstance(node, list):
            try:
                node, i = node[int(parts[i])], i + 1
            except (ValueError, IndexError):
                raise DocsError(f"{ref}: no list index {parts[i]!r}") from None
            continue
        if not isinstance(node, dict):
            raise DocsError(f"{ref}: {'.'.join(parts[:i])} is not a mapping")
        for j in range(len(parts), i, -1):  # the longest run of parts that is a key (keys may hold dots)
            if ".".join(parts[i:j]) in node:
                node, i = node[".".join(parts[i:j])], j
                break
        else:
            raise DocsError(f"{ref}: no key {parts[i]!r} (keys there: {', '.join(list(node)[:12])})")
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise DocsError(f"{ref} holds {node!r}, not a number")
    return float(node) * scale


def evaluate(expr: str) -> float:
    """A formula over results keys and numbers: + - * /, unary minus, parentheses (no eval)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise DocsError(f"formula {expr!r}: cannot read {expr[pos:]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    at = 0

    def peek() -> tuple[str, str] | None:
        return tokens[at] if at < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal at
        if at >= len(tokens):
            raise DocsError(f"formula {expr!r} ends early")
        at += 1
        return tokens[at - 1]

    def atom() -> float:
        kind, text = take()
        if kind == "num":
            return float(text)
        if kind == "key":
            return lookup(text)
        if text == "-":
            return -atom()
        if text == "(":
            v = sum_()
            if take() != ("op", ")"):
                raise DocsError(f"formula {expr!r}: missing ')'")
            return v
        raise DocsError(f"formula {expr!r}: unexpected {text!r}")

    def product() -> float:
        v = atom()
        while peek() in (("op", "*"), ("op", "/")):
            op = take()[1]
            w = atom()
            if op == "/" and w == 0:
                raise DocsError(f"formula {expr!r}: division by zero")
            v = v * w if op == "*" else v / w
        return v

    def sum_() -> float:
        v = product()
        while peek() in (("op", "+"), ("op", "-")):
            op = take()[1]
            w = product()
            v = v + w if op == "+" else v - w
        return v

    v = sum_()
    if at != len(tokens):
        raise DocsError(f"formula {expr!r}: unexpected {tokens[at][1]!r}")
    return v


def resolve(body: str) -> float:
    body = body.strip()
    if body.startswith("="):
        return evaluate(body[1:])
    if re.fullmatch(r"[\w.-]+\.json:\S.*", body):  # a plain reference may hold spaces
        return lookup(body)
    raise DocsError(f"cannot read reference {body!r}")


def kind_of(body: str) -> str:
    """'ref', 'marker', 'generated' or 'other' (an ordinary comment)."""
    b = body.strip()
    if b.startswith("=") or re.fullmatch(KEY, b):
        return "ref"
    word = re.split(r"[\s:]", b, maxsplit=1)[0]
    if word in MARKERS:
        return "marker"
    if b.startswith(("begin generated:", "end generated")):
        return "generated"
    if ".json" in b:
        return "ref"  # meant as a reference: resolve() reports what is wrong with it
    return "other"


# --------------------------------------------------------------------------- scanning a document


def mask(text: str, pattern: re.Pattern) -> str:
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def check_text(text: str, name: str = "doc") -> list[str]:
    """All problems of one markdown document, one message each."""
    errors: list[str] = []
    lines = text.splitlines()
    in_code = False
    in_span = False  # inside a code span that started on an earlier line of the paragraph
    generated: tuple[int, str, list[str]] | None = None
    for no, raw in enumerate(lines, 1):
        where = f"{name}:{no}"
        if raw.lstrip().startswith("```"):
            in_code, in_span = not in_code, False
            continue
        if in_code:
            continue
        if not raw.strip() or raw.lstrip().startswith("|"):
            in_span = False
        span_open, in_span = in_span, in_span ^ (raw.count("`") % 2 == 1)
        comments = [(m.start(), m.end(), m.group(1).strip()) for m in COMMENT.finditer(raw)]
        begin = [b for _, _, b in comments if b.startswith("begin generated:")]
        if begin:
            if generated is not None:
                errors.append(f"{where}: 'begin generated' inside a generated block")
            generated = (no, begin[0].partition(":")[2].strip(), [])
            continue
        if any(b == "end generated" for _, _, b in comments):
            if generated is None:
                errors.append(f"{where}: 'end generated' without 'begin generated'")
            else:
                errors += check_generated(name, *generated)
            generated = None
            continue
        if generated is not None:
            generated[2].append(raw)
            continue
        line = mask(mask("`" + raw, CODE), COMMENT)[1:] if span_open else mask(mask(raw, CODE), COMMENT)
        figures = []
        for m in FIGURE.finditer(line):
            shown, value, ulp = parse_figure(m)
            figures.append(Figure(no, m.start(), m.end(), shown, value, ulp))
        # references: each checks the figure right before it
        for start, _, body in comments:
            if kind_of(body) != "ref":
                continue
            before = [f for f in figures if f.end <= start and GAP.fullmatch(line[f.end:start])
                      and "<" not in raw[f.end:start]]
            if not before:
                errors.append(f"{where}: reference <!-- {body} --> follows no figure")
                continue
            fig = before[-1]
            fig.referenced = True
            try:
                stored = resolve(body)
            except DocsError as e:
                errors.append(f"{where}: figure '{fig.text}': {e}")
                continue
            if not math.isfinite(stored) or abs(stored - fig.value) > fig.ulp * (0.5 + 1e-6):
                errors.append(f"{where}: figure '{fig.text}' differs from <!-- {body} --> = {stored!r} "
                              f"(rounded to the digits shown: {round_like(stored, fig)})")
        # where every figure needs a reference or a marker
        regions: list[tuple[int, int]] = []
        is_table = raw.lstrip().startswith("|")
        if is_table:
            if is_separator(raw) or (no < len(lines) and is_separator(lines[no])):
                continue  # the separator and the header row
            bounds = [m.start() for m in re.finditer(r"(?<!\\)\|", line)]
            regions = [(a + 1, b) for a, b in zip(bounds[1:], bounds[2:], strict=False)]  # skip the label
        else:
            for m in BOLD.finditer(line):
                end = m.end()
                tail = re.match(r"(?:\s*<!--.*?-->)+", raw[end:])
                regions.append((m.start(), end + (tail.end() if tail else 0)))
        for a, b in regions:
            marks = [s for s, _, body in comments if a <= s < b and kind_of(body) == "marker"]
            refs = [s for s, _, body in comments if a <= s < b and kind_of(body) in ("ref", "marker")]
            for f in figures:
                if not (a <= f.start < b) or f.referenced:
                    continue
                nxt = [s for s in refs if s >= f.end]
                if nxt and nxt[0] in marks:
                    continue  # covered by the marker after it
                errors.append(f"{where}: figure '{f.text}' has no reference (add <!-- FILE.json:key -->, "
                              f"<!-- = formula -->, or a marker: {' / '.join(MARKERS)})")
    if generated is not None:
        errors.append(f"{name}:{generated[0]}: 'begin generated' without 'end generated'")
    return errors


def is_separator(row: str) -> bool:
    return bool(re.fullmatch(r"\s*\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*", row))


def round_like(stored: float, fig: Figure) -> str:
    if fig.ulp >= 1:
        return f"{stored:.0f}"
    return f"{stored:.{round(-math.log10(fig.ulp))}f}" if "e" not in fig.text else f"{stored:.3g}"


def check_generated(name: str, line: int, command: str, block: list[str]) -> list[str]:
    args = command.split()
    if len(args) < 2 or args[0] != "python" or not re.fullmatch(r"bench/\w+\.py", args[1]):
        return [f"{name}:{line}: generated block: command must be 'python bench/SCRIPT.py ...', "
                f"got {command!r}"]
    out = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return [f"{name}:{line}: {command} failed: {out.stderr.strip()[-500:]}"]
    want, have = out.stdout.strip().splitlines(), "\n".join(block).strip().splitlines()
    if want == have:
        return []
    for i, (w, h) in enumerate(zip(want, have, strict=False)):
        if w != h:
            return [f"{name}:{line + 1 + i}: differs from `{command}`:\n  doc:    {h}\n  script: {w}"]
    return [f"{name}:{line}: block has {len(have)} lines, `{command}` prints {len(want)}"]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT / "docs")) for d in DOCS])
def test_every_figure_has_a_source(doc: Path) -> None:
    errors = check_text(doc.read_text(), str(doc.relative_to(ROOT)))
    assert not errors, f"{len(errors)} problem(s):\n" + "\n".join(errors)


def duplicated_headings(text: str) -> list[str]:
    """Section headings (``#`` to ``###``) that appear more than once in one document: a merge that
    applied the same appended section twice leaves exactly this, and each copy's figures still check."""
    seen: dict[str, int] = {}
    for line in text.splitlines():
        level = len(line) - len(line.lstrip("#"))
        if 1 <= level <= 3 and line[level:].startswith(" "):
            seen[line.strip()] = seen.get(line.strip(), 0) + 1
    return sorted(h for h, n in seen.items() if n > 1)


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT / "docs")) for d in DOCS])
def test_no_section_appears_twice(doc: Path) -> None:
    assert duplicated_headings(doc.read_text()) == []


def test_duplicated_headings_are_found() -> None:
    text = "# A\n## B\ntext\n## C\n## B\n#### deep\n#### deep\n"
    assert duplicated_headings(text) == ["## B"]


def test_docs_found() -> None:
    names = {d.name for d in DOCS}
    assert {"benchmarks.md", "linf.md", "estimate.md", "guide.md", "boolean_linf.md"} <= names


def _one(text: str) -> list[str]:
    return check_text(text, "t.md")


def test_checker_catches_what_it_should() -> None:
    _cache["t.json"] = {"a": {"b": 0.7615, "0.5": 12.5, "epoch 34": {"x": 3}}, "l": [1.5, 2.5], "s": "no"}
    try:
        ok = [
            "**76.15%**<!-- t.json:a.b% -->",
            "76.2%<!-- t.json:a.b% --> in prose",
            "| label 3 | 12.5<!-- t.json:a.0.5 --> | **2.5 s**<!-- t.json:l.1 --> |",
            "| label | 3<!-- t.json:a.[epoch 34].x --> | 3<!-- t.json:a.epoch 34.x --> |",
            "**+1.0 point**<!-- = (t.json:l.1 - t.json:l.0) * 1 -->",
            "| a | <= 2<!-- target --> | 79.23%<!-- cited: Zhang et al. 2022 --> | 8, 12<!-- setting --> |",
            "| a | 4 h 19 min<!-- = 15540 / 60 --> | `--widths 1024,1024` |",
            "| a | 1.53x<!-- = t.json:l.0 + 0.03 --> |",
            "dates 2026-11-28 and nets 10-10-1 and l2 are not figures: **10-10-1**",
            "a code span `over\ntwo lines` (3 s<!-- t.json:a.epoch 34.x -->) -> `x`\n```\n**9 s**\n```\n"
            "**3 s**<!-- t.json:a.epoch 34.x -->",
        ]
        for text in ok:
            assert _one(text) == [], text
        bad = {
            "**76.0%**<!-- t.json:a.b% -->": "differs",
            "**76%**<!-- t.json:a.b -->": "differs",
            "| x | 72.9% |": "no reference",
            "| x | 1 / 2<!-- t.json:l.0 --> |": "no reference",
            "**3 points**": "no reference",
            "**1.5**<!-- t.json:a.zz -->": "no key",
            "**1.5**<!-- t.json:s -->": "not a number",
            "**1.5**<!-- nofile.json:a -->": "no results file",
            "**1.5**<!-- = t.json:l.0 t.json:l.1 -->": "unexpected",
            "**1.5**<!-- = (t.json:l.0 -->": "ends early",
            "text<!-- t.json:l.0 -->": "follows no figure",
        }
        for text, why in bad.items():
            errs = _one(text)
            assert errs and why in errs[0], (text, errs)
        assert "t.md:1" in _one("| x | 72.9% |")[0]
    finally:
        _cache.pop("t.json")


def test_formula_arithmetic() -> None:
    assert evaluate("1 + 2 * 3") == 7
    assert evaluate("(1 + 2) * 3") == 9
    assert evaluate("- 2 - -3") == 1
    assert evaluate("8 / 2 / 2") == 2
    with pytest.raises(DocsError):
        evaluate("__import__('os')")


if __name__ == "__main__":
    problems = [e for d in DOCS for e in check_text(d.read_text(), str(d.relative_to(ROOT)))]
    print("\n".join(problems) or "no problems")
    sys.exit(1 if problems else 0)

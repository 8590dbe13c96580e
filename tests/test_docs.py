"""References in the repository's text: cited Markdown files, repository paths and theory sections exist.

Pure text scanning of src/, docs/, examples/, benchmarks/, tests/ (this file excepted) and README.md:

(a) every referenced Markdown file (``*.md``) and repository path (``docs/...``, ``src/...``, ``tests/...``,
    ``examples/...``, ``benchmarks/...``, ``../...``) exists, relative to the repository root or to the
    referencing file's folder; a ``tests/...py::name`` reference names a function defined in that file;
(b) no reference points outside the repository (``shared/...``, or a ``../`` path that leaves it);
(c) every section cited after a Markdown file ("docs/theory/mcm.md section 8.1", "sections 2-7",
    "sections 4.1-4.4, 8.1", "calibration.md, \"Exact reduced simulation\"") is a heading of that file,
    and inside docs/theory a bare "section 8.1" is a heading of the note itself.

A failure lists file:line, the reference and what is wrong with it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
SCANNED = ("src", "docs", "examples", "benchmarks", "tests", "README.md")
SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yaml", ".yml", ".rst"}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".venv", "build", "dist"}
#: Markdown files the package writes into its output folders (``OUT/report.md``), not repository files
GENERATED = {"report.md"}
THEORY = ROOT / "docs" / "theory"

_START = r"(?<![\w./:-])"
MD_REF = re.compile(_START + r"((?:\.\./)*[\w-][\w.-]*(?:/[\w.-]+)*\.md)(?![\w-])")
PATH_REF = re.compile(_START + r"((?:\.\./)+[\w.-]+(?:/[\w.-]+)*|(?:docs|src|tests|examples|benchmarks)(?:/[\w.-]+)+)")
OUTSIDE = re.compile(_START + r"((?:\.\./)*shared/[\w./-]*)")
TEST_NAME = re.compile(r"::(\w+)")
NUMBER = r"\d+(?:\.\d+)*"
NUMBERS = NUMBER + r"(?:\s*(?:-|–|,|and|or)\s*" + NUMBER + r")*"
#: what may follow a file reference before its section: closing markup, then "section(s) N" (optionally in
#: parentheses) or a bare number ("mcm.md 3.4"); a quoted heading name after a comma
AFTER_FILE = re.compile(r"[`\]\)]*(?:\([^)]*\))?\s*(?:,\s*)?(?:\(?\s*sections?\s+(" + NUMBERS + r")(?![\w.]*\d)"
                        r"|(" + NUMBER + r")(?![\w.]*\d)(?!\s*%)|(?:section\s+)?\"([^\"]+)\")")
BARE_SECTION = re.compile(r"(?<![\w.])sections?\s+(" + NUMBERS + r")(?![\w.]*\d)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")
HEADING_NUMBER = re.compile(r"^(\d+(?:\.\d+)*)\.?(?:\s|$)")


def _scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        top = ROOT / name
        if top.is_file():
            files.append(top)
            continue
        for path in sorted(top.rglob("*")):
            parts = path.relative_to(ROOT).parts
            if any(p in SKIPPED_DIRS or p.endswith(".egg-info") or p.startswith(".") for p in parts):
                continue
            if path.is_file() and path.suffix in SUFFIXES and path.resolve() != SELF:
                files.append(path)
    return files


@lru_cache(maxsize=None)
def _headings(path: Path) -> tuple[frozenset[str], tuple[str, ...]]:
    """(section numbers, heading titles in lower case) of a Markdown file, outside code blocks."""
    numbers, titles, fenced = set(), [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            titles.append(match.group(1).lower())
            number = HEADING_NUMBER.match(match.group(1))
            if number:
                numbers.add(number.group(1))
    return frozenset(numbers), tuple(titles)


def _resolve(ref: str, source: Path) -> tuple[Path | None, str | None]:
    """(existing path, None) or (None, reason) for a reference found in ``source``."""
    inside = False
    for base in (ROOT, source.parent):
        candidate = (base / ref).resolve()
        if not candidate.is_relative_to(ROOT):
            continue
        inside = True
        if candidate.exists():
            return candidate, None
    if not inside:
        return None, "points outside the repository"
    return None, "no such file or folder in the repository (relative to the root or to the citing file)"


def _section_list(text: str) -> list[str]:
    """Section numbers named by "8.1", "2-7", "4.1-4.4, 8.1", "2 and 7" (both ends of a range)."""
    return re.findall(NUMBER, text)


def _check_sections(target: Path, match: re.Match, ref: str) -> list[str]:
    numbers, titles = _headings(target)
    listed, bare, name = match.group(1), match.group(2), match.group(3)
    problems = []
    if listed or bare:
        for number in _section_list(listed or bare):
            if number not in numbers:
                problems.append(f"{ref}: no section {number} in {target.relative_to(ROOT)}")
    elif name is not None and not any(name.lower() in title for title in titles):
        problems.append(f"{ref}: no heading named \"{name}\" in {target.relative_to(ROOT)}")
    return problems


def _text_problems(path: Path, text: str, in_theory: bool) -> list[tuple[int, str]]:
    """(offset, problem) for every bad reference in ``text`` (the contents of ``path``)."""
    problems = []
    for match in OUTSIDE.finditer(text):
        problems.append((match.start(), f"{match.group(1)}: points outside the repository (shared/ is not part of it)"))
    covered = []  # spans of file references with their sections, so those are not read as bare sections
    for match in MD_REF.finditer(text):
        ref = match.group(1)
        if ref.startswith("shared/") or "/shared/" in ref:
            continue  # reported above
        if ref in GENERATED or ref.split("/")[0].isupper():  # an output file (OUT/report.md, DIR/report.md)
            continue
        target, reason = _resolve(ref, path)
        if target is None:
            problems.append((match.start(), f"{ref}: {reason}"))
            continue
        after = AFTER_FILE.match(text, match.end())
        if after:
            cited = " ".join(text[match.start():after.end()].split())
            problems += [(match.start(), p) for p in _check_sections(target, after, cited)]
            covered.append((match.start(), after.end()))
    for match in re.finditer(r"\]\(([^)\s]+\.md)\)", text):  # a Markdown link's target, whatever its text
        target, reason = _resolve(match.group(1), path)
        if target is None:
            problems.append((match.start(), f"{match.group(1)}: {reason}"))
    for match in PATH_REF.finditer(text):
        ref = match.group(1).rstrip(".")
        if ref.endswith(".md") or "shared/" in ref:
            continue  # checked above
        target, reason = _resolve(ref, path)
        if target is None:
            problems.append((match.start(), f"{ref}: {reason}"))
            continue
        name = TEST_NAME.match(text, match.end())
        if name and target.suffix == ".py":
            source = target.read_text(encoding="utf-8")
            if not re.search(rf"^\s*(?:async\s+)?def {name.group(1)}\b", source, re.MULTILINE):
                problems.append((match.start(), f"{ref}::{name.group(1)}: no function {name.group(1)} in {ref}"))
    if in_theory:
        numbers, _ = _headings(path.resolve())
        fences = [m.start() for m in re.finditer(r"^\s*```", text, re.MULTILINE)]
        for match in BARE_SECTION.finditer(text):
            if any(lo <= match.start() < hi for lo, hi in covered):
                continue
            if sum(f < match.start() for f in fences) % 2:
                continue  # inside a code block
            for number in _section_list(match.group(1)):
                if number not in numbers:
                    problems.append((match.start(), f"{match.group(0)}: no section {number} in this note"))
    return problems


def _line_problems(path: Path, text: str, in_theory: bool = False) -> list[str]:
    """The problems of ``text`` as strings (the offsets dropped)."""
    return [problem for _, problem in _text_problems(path, text, in_theory)]


def _problems() -> list[str]:
    out = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        in_theory = path.suffix == ".md" and path.resolve().is_relative_to(THEORY)
        for offset, problem in sorted(_text_problems(path, text, in_theory)):
            out.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}: {problem}")
    return out


def test_theory_notes_exist():
    for name in ("README.md", "mcm.md", "calibration.md", "images.md", "generalization.md"):
        assert (THEORY / name).is_file(), f"docs/theory/{name} is missing"


def test_references_point_to_existing_files_and_sections():
    problems = _problems()
    assert not problems, "bad references:\n" + "\n".join(problems)


def test_the_checker_sees_bad_references(tmp_path, monkeypatch):
    """The scanner flags a missing file, a missing section, an outside path and an unknown test name."""
    theory = tmp_path / "docs" / "theory"
    theory.mkdir(parents=True)
    (theory / "mcm.md").write_text("# t\n\n## 8. Online SGD\n\n### 8.1 Algorithm\n", encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_here():\n    pass\n", encoding="utf-8")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    source = tmp_path / "mod.py"
    good = ["docs/theory/mcm.md section 8.1", "(docs/theory/mcm.md sections 8-8.1)", "tests/test_x.py::test_here",
            "see OUT/report.md"]
    bad = ["docs/theory/mcm.md section 8.2", "docs/theory/mcm.md sections 7-8", "mcm_theory.md section 8.1",
           "shared/science/mcm_theory.md", "../../outside.md", "tests/test_x.py::test_gone", "docs/nothing.md"]
    for text in good:
        assert _line_problems(source, text, False) == [], text
    for text in bad:
        assert _line_problems(source, text, False), text

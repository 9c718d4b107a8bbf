"""The repository's documentation speaks to users of inferkit, and its links work.

Scanned: ``README.md``, every ``docs/**/*.md``, ``benchmarks/RESULTS.md``, the examples' READMEs,
and the docstrings and comments of the Python sources of ``inferkit/``, ``plugins/``,
``benchmarks/`` and ``examples/``. Checked:

(a) no development-process words (:data:`PROCESS_PATTERNS`): how, when and by whom the code was
    written is not documentation;
(b) no path outside the repository: an absolute ``/work``, ``/home``, ``/root``, ``/Users`` or
    ``/mnt`` path, or a ``../`` that leaves the repository root (commands are run from the root;
    Markdown links are resolved from their file's folder);
(c) every relative Markdown link and image resolves to a file or folder of the repository, and a
    ``#anchor`` into a Markdown file names one of its headings (GitHub's heading slugs).

Also: the README states the test command exactly as ``.ci/run`` runs it, and its Python example runs.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Development-process words. Each is precise enough that ordinary English passes
#: (``an issue with X``, ``the seed used to draw z_0``, ``session-scoped fixtures``).
PROCESS_PATTERNS: dict[str, str] = {
    "issue number": r"\bissues?\s+#?\d+\b",
    "the issue's": r"\b(?:the|this|that)\s+issue's\b",
    "session": r"\bsessions?\b(?!-scoped)",
    "lent": r"\blent\b",
    "not available (history)": r"\b(?:was|were)\s+not\s+available\b",
    "no GPU was": r"\bno\s+GPUs?\s+(?:was|were|is|has\s+been)\b",
    "development": r"\bdevelopment\b",
    "while developing": r"\bwhile\s+developing\b",
    "earlier default": r"\bearlier\s+(?:defaults?|runs?|versions?)\b",
    "earlier inferkit": r"\bearlier\s+inferkit\b",
    "previously": r"\bpreviously\b",
    "used to (history)": r"\b(?:it|this|that|we|they|which)\s+used\s+to\b|\bused\s+to\s+(?:be|default)\b",
    "now defaults": r"\bnow\s+defaults?\b",
    "before ... became": r"\bbefore\b[^.;]{0,120}\bbecame\b",
    "what changed since": r"\bwhat\s+changed\s+since\b",
    "first measured run": r"\bfirst\s+measured\s+run\b",
    "colleague": r"\bcolleagues?\b",
    "helper engineer": r"\bhelpers?\s+(?:engineers?|sessions?|agents?)\b",
    "engineer": r"\bengineers?\b",
    "the lead": r"\bthe\s+lead\b(?!\s+(?:author|to)\b)",
    "workplace": r"\bworkplaces?\b",
    "TODO": r"\b(?:TODO|FIXME)\b",
}
PROCESS_RE = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in PROCESS_PATTERNS.items()}
#: ``#12`` outside code (a tracker number); ``owner/repo#12`` (an upstream reference) passes.
ISSUE_HASH_RE = re.compile(r"(?<![\w/&#`-])#\d+\b")
ABSOLUTE_RE = re.compile(r"(?<![\w.:/~-])/(?:work|home|root|Users|mnt)/")
DOTDOT_RE = re.compile(r"(?<![\w./])(?:\.\./)+[\w.-]*")
FENCE_RE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE_RE = re.compile(r"`[^`\n]*`")
LINK_RE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "benchmarks" / "RESULTS.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted((ROOT / "examples").rglob("*.md"))
    return [path for path in files if path.is_file()]


def python_files() -> list[Path]:
    files: list[Path] = []
    for folder in ("inferkit", "plugins", "benchmarks", "examples"):
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "tests" not in p.relative_to(ROOT).parts)
    return files


def split_markdown(text: str) -> tuple[str, str]:
    """``(prose, code)``: the text outside code (code spans and fenced blocks blanked, lines kept) and
    the code alone."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE_RE.match(line):
            fenced = not fenced
            prose.append("")
            continue
        if fenced:
            code.append(line)
            prose.append("")
        else:
            code.extend(span.strip("`") for span in INLINE_CODE_RE.findall(line))
            prose.append(INLINE_CODE_RE.sub(" ", line))
    return "\n".join(prose), "\n".join(code)


def python_text(path: Path) -> str:
    """The docstrings and comments of a Python file, one per line."""
    source = path.read_text(encoding="utf-8")
    parts: list[str] = []
    previous = tokenize.INDENT
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            parts.append(token.string)
        elif token.type == tokenize.STRING and previous in (tokenize.INDENT, tokenize.NEWLINE, tokenize.NL,
                                                              tokenize.DEDENT):
            parts.append(token.string)  # a string statement: a docstring
        if token.type not in (tokenize.COMMENT, tokenize.NL):
            previous = token.type
    return "\n".join(parts)


def process_words(text: str, *, prose: str | None = None) -> list[str]:
    """The development-process words in ``text`` (``#N`` only in ``prose``, the text outside code)."""
    found = [f"{name}: {m.group(0)!r}" for name, regex in PROCESS_RE.items() for m in regex.finditer(text)]
    found += [f"issue number: {m.group(0)!r}" for m in ISSUE_HASH_RE.finditer(text if prose is None else prose)]
    return found


def outside_paths(text: str) -> list[str]:
    """Absolute machine paths, and ``../`` paths, in ``text`` (commands, run from the root)."""
    return [m.group(0) for m in ABSOLUTE_RE.finditer(text)] + [m.group(0) for m in DOTDOT_RE.finditer(text)]


def link_targets(prose: str) -> list[str]:
    return LINK_RE.findall(prose) + REFERENCE_RE.findall(prose)


def without_links(prose: str) -> str:
    return REFERENCE_RE.sub(" ", LINK_RE.sub(" ", prose))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    result = set()
    for line in prose.splitlines():
        match = HEADING_RE.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_link(source: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``source``) is broken, or ``None``."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, ...
        return None
    path_part, _, anchor = target.partition("#")
    resolved = (source.parent / path_part).resolve() if path_part else source
    if ROOT not in resolved.parents and resolved != ROOT:
        return "leaves the repository"
    if not resolved.exists():
        return "no such file"
    if anchor and resolved.suffix == ".md" and anchor.lower() not in anchors(resolved):
        return f"no heading #{anchor} in {resolved.relative_to(ROOT)}"
    return None


# --------------------------------------------------------------------------- the patterns themselves

@pytest.mark.parametrize("text", [
    "fixed in issue 12", "see issue #7", "(#3)", "as in #14.", "the issue's targets",
    "measured in this session", "no GPU was lent", "the GPU was not available", "on the development machine",
    "to skip them while developing", "the earlier default", "it previously chose", "it used to be 0.1",
    "this used to pick", "now defaults to whitened", "before its default became whitened",
    "What changed since the first measured run", "ask a colleague", "a helper session", "the lead merges",
    "our workplace", "TODO: measure",
])
def test_process_words_are_found(text):
    assert process_words(text)


@pytest.mark.parametrize("text", [
    "an issue with large batches", "issues of numerical stability", "the seed used to draw z_0",
    "which is used to check invertibility", "session-scoped fixtures", "pytorch/pytorch#142815",
    "the lead author", "this can lead to", "it became clear that J is not convex", "developer tools",
    "a lens", "# Heading", "the 2nd step", "shared weights", "silent failures", "the learned prior",
])
def test_ordinary_english_passes(text):
    assert not process_words(text)


@pytest.mark.parametrize("text, found", [
    ("--data-dir ../shared/mnist", True), ("cd /work/main", True), ("/home/user/data", True),
    ("pip install -e ../..", True), ("https://example.org/home/x", False), ("~/data/mnist", False),
    ("runs/a/../b", False), ("plugins/ladder", False), ("a/work/b", False),
])
def test_outside_paths(text, found):
    assert bool(outside_paths(text)) == found


def test_links_and_slugs():
    prose = "See [the guide](docs/gpu.md#how-to-use-them), ![fig](a.png) and [x]: docs/y.md\n[ref]: docs/z.md"
    assert link_targets(prose) == ["docs/gpu.md#how-to-use-them", "a.png", "docs/z.md"]
    assert slug("Tuners and `log-determinants` (J)") == "tuners-and-log-determinants-j"
    assert broken_link(ROOT / "README.md", "docs/no-such-page.md") == "no such file"
    assert broken_link(ROOT / "docs" / "gpu.md", "../../outside.md") == "leaves the repository"
    assert broken_link(ROOT / "README.md", "https://pytorch.org") is None


def test_docstrings_and_comments_are_read():
    text = python_text(ROOT / "tests" / "test_docs.py")
    assert "The repository's documentation speaks to users" in text
    assert "# --------------------------------------------------------------------------- the patterns" in text


# --------------------------------------------------------------------------- the repository

@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown(path):
    text = path.read_text(encoding="utf-8")
    prose, code = split_markdown(text)
    problems = [f"process word, {hit}" for hit in process_words(text, prose=prose)]
    problems += [f"path outside the repository: {hit!r}"
                 for hit in outside_paths(without_links(prose) + "\n" + code)]
    problems += [f"link {target!r}: {why}" for target in link_targets(prose)
                 if (why := broken_link(path, target))]
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_docstrings_and_comments(path):
    text = python_text(path)
    problems = process_words(text) + [f"path outside the repository: {hit!r}"
                                                for hit in outside_paths(text)]
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_readme_states_the_ci_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = re.findall(r"^python3? -m pytest.*$", ci, re.MULTILINE)
    assert len(command) == 1, ".ci/run runs one pytest command"
    stated = "python -m pytest" + command[0].split("-m pytest", 1)[1]
    assert stated in (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_python_example_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert blocks, "README.md has a Python example"
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102

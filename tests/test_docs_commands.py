"""The command lines the docs quote still parse. Every `puface ...` line in the README, docs/ (Markdown and
TOML), bench/results/*.md, the bench scripts' docstrings, the packaged configs' comments and the CLI's own help
texts names a sub-command, options and choice / number values today's click CLI takes, packaged configs,
shipped detectors and purifiers, and registered attacks, defenses, trainers and face models that exist; every
`python X.py ...` line names a script that is there and whose argparse accepts its options. Nothing is run:
click's and argparse's own parsers read the tokens. CHANGELOG.md is history and is left out.
Also: the repository paths the README, docs/RESULTS.md and docs/ARCHITECTURE.md cite (in backticks or as
Markdown links) exist.

Placeholders the docs write (`N`, `DIR`, `RUN`, `runs/...`, `[--seed N]`, `a|b`, `...`) are read as such:
upper-case tokens stand for any value, `[...]` marks optional parts, `a|b` is checked as a and as b. Paths are
not looked up on disk (example paths), except paths into the repository (docs/..., src/...)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:  # the benchmarks import their helpers (benchtables) as siblings
    sys.path.insert(0, str(REPO / "bench"))
COMMITTED_ROOTS = ("docs/", "bench/", "src/", "tests/", "tools/", "scripts/")


def doc_files() -> list[Path]:
    """The files whose command lines are checked (CHANGELOG.md is history: left out)."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "docs").rglob("*.toml")),
            *sorted((REPO / "bench" / "results").glob("*.md")), *sorted((REPO / "bench").glob("*.py")),
            *sorted((REPO / "src" / "puface" / "configs").rglob("*.toml"))]


# ---------------------------------------------------------------------------------------------------------------
# finding the command lines


@dataclass(frozen=True)
class Quoted:
    """A command line as a doc quotes it: where, the text, and whether it stands alone on a code line (so its
    required arguments must be there) or is an inline fragment (`puface purify --step S`)."""

    where: str
    text: str
    whole: bool


# env assignments, taskset, .venv/bin/, torchrun / python -m: what may stand before the program
_PREFIX = r"(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:taskset\s+-c\s+\S+\s+)?"
_PROGRAM = re.compile(
    _PREFIX + r"(?:(?:torchrun\s[^`]*?|python3?\s+)-m\s+puface|(?:[\w.]+/)*puface|python3?\s+(?P<script>[\w./-]+\.py))"
    r"(?=\s|$)(?P<rest>.*)$",
    flags=re.S,
)


def _commands_in(text: str) -> list[str]:
    """The commands in one code line or code span: split at shell operators, each part that starts with a
    program we know ('puface ...', 'python bench/X.py ...'), normalised to 'puface ...' / 'python X.py ...'."""
    out = []
    for part in re.split(r"\s(?:&&|;|\|\|?|>>?)\s", text):
        m = _PROGRAM.match(part.strip())
        if m:
            head = f"python {m['script']}" if m["script"] else "puface"
            out.append(f"{head}{m['rest']}")
    return out


def _join_continuations(lines: list[str], comment: str | None) -> list[tuple[int, str]]:
    """(line number, line) with lines ending in a backslash joined to the next (the next's comment marker
    and indentation dropped)."""
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        start, line = i + 1, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            nxt = lines[i].lstrip()
            if comment and nxt.startswith(comment):
                nxt = nxt[len(comment):].lstrip()
            line = line.rstrip()[:-1] + " " + nxt
        out.append((start, line))
        i += 1
    return out


def _spans(paragraph: str) -> list[tuple[int, str]]:
    """(offset in lines, content) of the inline code spans of a paragraph (spans may cross line breaks)."""
    return [(paragraph.count("\n", 0, m.start()), " ".join(m[1].split()))
            for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", paragraph)]


def _quoted_lines(name: str, numbered: list[tuple[int, str]], code: set[int]) -> list[Quoted]:
    """Commands of `numbered` lines: those in `code` (code blocks) whole, the rest as prose whose code spans are
    read (a paragraph ends at a blank or code line)."""
    found: list[Quoted] = []
    para: list[tuple[int, str]] = []

    def flush() -> None:
        if para:
            text = "\n".join(line for _, line in para)
            for offset, span in _spans(text):
                found.extend(Quoted(f"{name}:{para[0][0] + offset}", c, False) for c in _commands_in(span))
            para.clear()

    for number, line in numbered:
        stripped = line.strip()
        if number in code and _commands_in(stripped):
            flush()
            stripped = re.sub(r"\s{2,}\([^)]*\)\s*$", "", stripped)  # a trailing remark: `cmd   (seed 1: ...)`
            found.extend(Quoted(f"{name}:{number}", c, True) for c in _commands_in(stripped))
        elif not stripped or number in code:
            flush()
        else:
            para.append((number, line))
    flush()
    return found


def quoted_commands(path: Path, text: str | None = None) -> list[Quoted]:
    """The `puface` and `python X.py` command lines quoted in one doc file (its `text`, when given)."""
    name = path.relative_to(REPO).as_posix()
    text = path.read_text(encoding="utf-8") if text is None else text
    if path.suffix == ".toml":  # the comments; a comment line that starts with a command is a code line
        lines = [ln.lstrip()[1:] if ln.lstrip().startswith("#") else "" for ln in text.splitlines()]
        numbered = _join_continuations(lines, "#")  # code: indented under the '#' (prose starts one space in)
        return _quoted_lines(name, numbered, {n for n, ln in numbered if ln.startswith("  ")})
    if path.suffix == ".py":  # the module docstring, read like a comment block
        doc = ast.get_docstring(ast.parse(text), clean=False) or ""
        numbered = _join_continuations(doc.splitlines(), None)
        return _quoted_lines(name, numbered, {n for n, ln in numbered if ln.startswith("    ")})
    numbered = _join_continuations(text.splitlines(), None)
    code, fenced = set(), False
    for number, line in numbered:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            code.add(number)
        elif fenced or line.startswith("    ") or line.startswith("\t"):
            code.add(number)
    return _quoted_lines(name, numbered, code)


# ---------------------------------------------------------------------------------------------------------------
# reading the tokens


def is_placeholder(token: str) -> bool:
    """An upper-case stand-in for a value: N, DIR, RUN, SPEC@N, OUT/best.safetensors is not (lower case)."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_@\[\]<>]*", token)) or token == "..."


def variants(command: str) -> list[list[str]]:
    """The token lists a doc's command stands for: shell-split (quotes, `# comments`), optional `[...]`
    brackets dropped, `...` dropped (after an option: a placeholder value), each `a|b` choice read both ways
    (at most 16 variants)."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError as e:  # an unclosed quote
        raise AssertionError(f"cannot split `{command}`: {e}") from None
    tokens = tokens[2:] if tokens[0] == "python" else tokens[1:]
    cleaned: list[list[str]] = []
    for tok in tokens:
        tok = tok.lstrip("[")
        while tok.endswith("]") and tok.count("]") > tok.count("["):
            tok = tok[:-1]
        if tok == "..." and cleaned and cleaned[-1][0].startswith("-"):
            cleaned.append(["VALUE"])  # `--attack ...`: some value
        elif tok and tok != "...":
            cleaned.append(tok.split("|") if re.fullmatch(r"[\w.-]+(\|[\w.-]+)+", tok) else [tok])
    return [list(v) for v in itertools.islice(itertools.product(*cleaned), 16)]


# ---------------------------------------------------------------------------------------------------------------
# puface: click


def _named(value: str, kind: str) -> str | None:
    """Why `value`, where a config of `kind` is asked for, names none: as `find_config` reads it, a file, else a
    packaged config by name; a path into the repository must be there, other paths are the user's own files."""
    from puface.utils.tomlconfig import packaged_config, packaged_config_names

    if is_placeholder(value) or (REPO / value).is_file() or packaged_config(value, kind) is not None:
        return None
    if value.startswith(COMMITTED_ROOTS):
        return f"{value}: no such file in the repository"
    if _is_path(value):
        return None
    return f"no packaged {kind} config {value!r} (packaged: {', '.join(packaged_config_names(kind))})"


def _shipped(value: str, names: dict, what: str) -> str | None:
    if _is_path(value) or value in names:
        return _committed_path_missing(value) if _is_path(value) else None
    return f"no shipped {what} {value!r} (shipped: {', '.join(names)})"


def _is_path(value: str) -> bool:
    return is_placeholder(value) or "/" in value or bool(re.search(r"\.\w+$", value)) or value.startswith("$")


def _committed_path_missing(value: str) -> str | None:
    """A path into the repository (docs/..., src/...) that is not there."""
    if value.startswith(COMMITTED_ROOTS) and not (REPO / value).exists():
        return f"{value}: no such file in the repository"
    return None


def _registered(value: str, names: list[str], what: str) -> str | None:
    """Why the spec `value` (name[:key=value,...], steps joined by '+') names no registered `what`; a model
    file (a name with a suffix) is the user's. Names a doc's own example registers (`.register("my-attack"`)
    count as registered."""
    unknown = [step.split(":")[0] for step in value.split("+")
               if step.split(":")[0] not in (*names, *_doc_registered()) and not _is_path(step.split(":")[0])]
    return f"no {what} {', '.join(unknown)} (registered: {', '.join(names)})" if unknown else None


_EXAMPLE_NAMES: list[str] = []


def _doc_registered() -> list[str]:
    if not _EXAMPLE_NAMES:
        text = "".join(p.read_text(encoding="utf-8") for p in doc_files())
        _EXAMPLE_NAMES.extend(["none", *re.findall(r"\.register\(\"([\w-]+)\"", text)])
    return _EXAMPLE_NAMES


def _value_checks() -> dict[tuple[str, str], object]:
    """(command, option or argument name) -> check(value) -> problem or None, for values that name things."""
    from puface.attacks import ATTACKS
    from puface.defenses.registry import DEFENSES
    from puface.detection import SHIPPED_DETECTORS
    from puface.evaluation.trainers import TRAINERS
    from puface.models.registry import list_embedders
    from puface.purifier.model import SHIPPED_WEIGHTS

    return {
        ("reproduce", "config"): lambda v: _named(v, "experiment"),
        ("train-purifier", "--config"): lambda v: _named(v, "purifier"),
        ("train-detector", "--config"): lambda v: _named(v, "detector"),
        ("*", "--detector"): lambda v: _shipped(v, SHIPPED_DETECTORS, "detector"),
        ("purify", "--weights"): lambda v: _shipped(v, SHIPPED_WEIGHTS, "purifier"),
        ("evaluate", "--attack"): lambda v: _registered(v, ATTACKS.names(), "attack"),
        ("cloak", "--attack"): lambda v: _registered(v, ATTACKS.names(), "attack"),
        ("evaluate", "--defense"): lambda v: _registered(v, DEFENSES.names(), "defense"),
        ("evaluate", "--trainer"): lambda v: _registered(v, TRAINERS.names(), "trainer"),
        ("evaluate", "--victim"): lambda v: _registered(v, list_embedders(), "face model"),
        ("cloak", "--surrogate"): lambda v: _registered(v, list_embedders(), "face model"),
    }


def _given(value: object) -> bool:
    """Whether click's parser read a value (it marks the others with a sentinel, or None, or ())."""
    return isinstance(value, (str, bool, int, float)) or (isinstance(value, (list, tuple)) and len(value) > 0)


def check_puface(tokens: list[str], whole: bool) -> list[str]:
    """Problems of `puface TOKENS` as click reads it today: unknown sub-command or option, a value a type or a
    choice refuses, a missing required argument (`whole` lines only), a packaged config or shipped weights
    that do not exist. Path values are not checked against the disk (example paths), except repository ones."""
    from puface.cli import cli

    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="puface")
    names = ["puface"]
    tokens = list(tokens)
    while isinstance(cmd, click.Group):
        if not tokens or tokens[0] in ("--help", "-h", "--version") or is_placeholder(tokens[0]):
            return []  # `puface COMMAND --help`
        if tokens[0].startswith("-"):
            return [f"{' '.join(names)}: no such option {tokens[0]}"]
        sub = cmd.get_command(ctx, tokens[0])
        if sub is None:
            return [f"{' '.join(names)}: no such command {tokens[0]!r}"]
        names.append(tokens.pop(0))
        cmd, ctx = sub, click.Context(sub, info_name=names[-1], parent=ctx)
    if "--help" in tokens or "-h" in tokens:
        return []
    try:
        values, extra, _ = cmd.make_parser(ctx).parse_args(list(tokens))
    except click.BadOptionUsage as e:
        if whole or not tokens or e.option_name != tokens[-1]:
            return [f"{' '.join(names)}: {e.format_message()}"]
        # an inline fragment naming an option (`puface detect --detector`): read with some value
        return check_puface([*names[1:], *tokens, "VALUE"], whole)
    except click.UsageError as e:
        return [f"{' '.join(names)}: {e.format_message()}"]
    problems = []
    if extra:
        problems.append(f"{' '.join(names)}: unexpected extra arguments {extra}")
    checks = _value_checks()
    for param in cmd.get_params(ctx):
        value = values.get(param.name)
        label = param.opts[0] if isinstance(param, click.Option) else param.name or ""
        if not _given(value):
            if whole and param.required:
                problems.append(f"{' '.join(names)}: missing {param.human_readable_name}")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if not isinstance(item, str) or is_placeholder(item):
                continue
            if not isinstance(param.type, click.Path):  # example paths need not exist here
                try:
                    param.type.convert(item, param, ctx)
                except click.BadParameter as e:
                    problems.append(f"{' '.join(names)} {label}: {e.format_message()}")
            check = checks.get((names[-1], label)) or checks.get(("*", label))
            problem = check(item) if callable(check) else None
            if problem:
                problems.append(f"{' '.join(names)} {label}: {problem}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# python X.py: argparse


class _Parser(Exception):
    """Raised instead of parsing: carries the parser a script's main() built."""


class _Refused(Exception):
    """argparse refused the arguments (its message)."""


_PARSERS: dict[Path, argparse.ArgumentParser] = {}


def script_parser(path: Path) -> argparse.ArgumentParser:
    """The ArgumentParser `path`'s main() builds, caught when it parses (nothing after that runs); types
    let placeholders (N, DIR) through, errors raise `_Refused`."""
    if path not in _PARSERS:
        spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

        def caught(self, args=None, namespace=None):
            raise _Parser(self)

        try:  # parse_args reads through parse_known_args: either stops main() there
            with mock.patch.object(argparse.ArgumentParser, "parse_known_args", caught):
                module.main()
        except _Parser as e:
            parser = e.args[0]
        else:
            raise AssertionError(f"{path.name}: main() did not parse arguments")

        def refuse(message: str):
            raise _Refused(message)

        parser.error = refuse
        parser.allow_abbrev = False  # a doc writes options in full (a new option can make a prefix ambiguous)
        for action in parser._actions:
            if callable(action.type):
                action.type = _lenient(action.type)
        _PARSERS[path] = parser
    return _PARSERS[path]


def _lenient(convert):
    def read(value: str):
        return value if is_placeholder(value) else convert(value)

    read.__name__ = getattr(convert, "__name__", "value")
    return read


def check_script(script: str, tokens: list[str], doc: Path) -> list[str]:
    """Problems of `python SCRIPT TOKENS` (SCRIPT relative to the repository, or to the `doc` quoting it): a
    script that is not there, options its argparse refuses (scripts whose main() builds an ArgumentParser;
    the others only must exist)."""
    path = REPO / script if (REPO / script).is_file() else doc.parent / script
    if not path.is_file():
        return [f"{script}: no such script"]
    if "argparse" not in path.read_text(encoding="utf-8"):
        return []
    parser = script_parser(path)
    try:
        parser.parse_args(tokens)
    except _Refused as e:
        return [f"{script}: {e.args[0]}"]
    return []


def check(command: Quoted) -> list[str]:
    """Every problem of one quoted command, each prefixed with where it is quoted."""
    problems: set[str] = set()
    for tokens in variants(command.text):
        if command.text.startswith("puface"):
            problems.update(check_puface(tokens, command.whole))
        else:
            problems.update(check_script(command.text.split()[1], tokens, REPO / command.where.split(":")[0]))
    return [f"{command.where}: `{command.text}`: {p}" for p in sorted(problems)]


# ---------------------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_the_quoted_commands_parse(path):
    problems = [p for q in quoted_commands(path) for p in check(q)]
    assert not problems, "\n".join(problems)


def test_the_docs_quote_commands_and_they_are_found():
    """The extraction finds what it should (else the test above would pass by finding nothing)."""
    found = {p.relative_to(REPO).as_posix(): quoted_commands(p) for p in doc_files()}
    assert sum(map(len, found.values())) > 300
    readme = [q.text.split("  #")[0].strip() for q in found["README.md"]]
    assert "puface purify --rank 0 --world-size 4 big/ out/" in readme
    assert "puface reproduce lfw --data lfw-chips150/ --out runs/lfw" in readme
    results = [q.text for q in found["docs/RESULTS.md"]]
    assert any(t.startswith("puface report cells draws docs/results/lfw-fawkes-cap") and "--attack" in t
               for t in results)  # a line continued with a backslash is one command
    assert any(t.startswith("python bench/bench_detect.py") for t in results)
    assert any(q.text.startswith("puface train-purifier --config default") and q.whole
               for q in found["src/puface/configs/purifier/default.toml"])


@pytest.mark.parametrize("text, whole, expected", [
    ("puface purify --no-such-option IN OUT", True, "No such option"),
    ("puface purfy IN OUT", True, "no such command"),
    ("puface report cells everyone docs/results/lfw", True, "'everyone' is not one of"),
    ("puface reproduce lfw-no-such-grid --out runs/x", True, "no packaged experiment config"),
    ("puface reproduce docs/results/no-such.toml --out runs/x", True, "no such file in the repository"),
    ("puface train-purifier --config v9 --data d/", True, "no packaged purifier config"),
    ("puface detect --detector sharpish photos/", True, "no shipped detector"),
    ("puface purify --weights arcface113 in/ out/", True, "no shipped purifier"),
    ("puface purify --step fast in/ out/", True, "is not a valid float"),
    ("puface evaluate --attack fawks:mode=high", False, "no attack fawks"),
    ("puface evaluate --defense blur:sigma=1+bitdeep:bits=5", False, "no defense bitdeep"),
    ("puface evaluate --victim sfase --trainer nnn", False, "no face model sfase"),
    ("puface evaluate --trainer nnn", False, "no trainer nnn"),
    ("puface cloak --surrogate dlib-resnet28 in/ out/", True, "no face model dlib-resnet28"),
    ("puface purify in/", True, "missing"),
    ("puface detect --detector", True, "requires an argument"),
    ("puface detect --detectr", False, "No such option"),
    ("puface models lst", True, "no such command"),
    ("python bench/bench_detect.py measure --no-such-flag 1", True, "unrecognized arguments"),
    ("python bench/bench_detect.py measur", True, "invalid choice"),
    ("python bench/bench_nothing.py --n 1", True, "no such script"),
    ("python bench/bench_align.py --part parity", True, "unrecognized arguments"),  # no abbreviations
    ("puface cloak --attack fawkes --mode highest me/ out/", True, "'highest' is not one of"),
])
def test_a_drifted_command_is_caught(text, whole, expected):
    problems = check(Quoted("doc.md:1", text, whole))
    assert problems and any(expected in p for p in problems), problems


@pytest.mark.parametrize("text, whole", [
    ("puface purify --skip-cloaked", False),  # an inline fragment: IN and OUT may be left out
    ("puface detect --detector", False),  # a fragment naming an option
    ("puface reproduce lfw --data lfw-chips150/ --out runs/lfw [--seed N]", True),
    ("puface report cells MODE RUN ...", True),
    ("puface detect --engine ray [--address ADDR] [--workers N] IN", True),
    ("puface align --template dlib150|arcface112 photos/ chips/", True),
    ("python bench/bench_detect.py cloaks|measure --variants N --attack 'fawkes:mode=high,label=x@60'", True),
    ("puface reproduce docs/studies/2026-12-05-private-recipes/lfw-hardening.toml --out runs/h", True),
    ("puface purify --weights runs/mine/best.safetensors in/ out/", True),
    ("puface evaluate --attack 'lowkey:embedders=dlib-resnet29|sface' --victim mobileface.pt --defense none", True),
    ("puface evaluate --attack my-attack:steps=20", False),  # registered by the example in ARCHITECTURE.md
])
def test_placeholders_and_alternatives_are_read_as_such(text, whole):
    assert check(Quoted("doc.md:1", text, whole)) == []


def help_texts() -> list[tuple[str, str]]:
    """(command, text) of every help text of the CLI: each command's and each of its options'."""
    from puface.cli import cli

    ctx = click.Context(cli, info_name="puface")
    out = [("", cli.help or "")]
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        subs = [(f"{name} {s}", cmd.get_command(ctx, s)) for s in cmd.list_commands(ctx)] \
            if isinstance(cmd, click.Group) else [(name, cmd)]
        for full, sub in subs:
            assert sub is not None
            out += [(full, sub.help or ""), *((full, getattr(p, "help", None) or "") for p in sub.params)]
    return out


def test_the_commands_the_help_texts_quote_parse():
    """`puface X --help` sends readers to other commands and options (`puface detect --detector`): they exist."""
    quoted = [Quoted(f"puface {name} --help", c, False) for name, text in help_texts()
              for _, span in _spans(text) for c in _commands_in(span)]
    assert len(quoted) > 10
    problems = [p for q in quoted for p in check(q)]
    assert not problems, "\n".join(problems)


def test_a_drifted_doc_fails():
    """Whole-file path: README.md with one option renamed is caught at its line."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--skip-cloaked" in readme
    line = readme[: readme.index("--skip-cloaked")].count("\n") + 1
    drifted = readme.replace("--skip-cloaked", "--skip-cloaks", 1)
    problems = [p for q in quoted_commands(REPO / "README.md", drifted) for p in check(q)]
    assert problems and all(p.startswith(f"README.md:{line}:") for p in problems), problems


# ---------------------------------------------------------------------------------------------------------------
# the paths the docs cite

PACKAGE = REPO / "src" / "puface"


def _braces(path: str) -> list[str]:
    """`a{,-seed1}/` -> ["a/", "a-seed1/"] (shell brace expansion, nested)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [x for alt in m[1].split(",") for x in _braces(path[: m.start()] + alt + path[m.end():])]


def cited_paths(doc: Path) -> list[tuple[int, str, Path]]:
    """(line, path as cited, where it must be) for each repository path a doc cites: a backticked path from the
    repository root (docs/, bench/, src/, ...) or inside the package (`defenses/shared.py`,
    `configs/detector/edits.toml`, `puface/weights/...`: files and folders, not `module.name` symbols), and each
    relative Markdown link. Left out: placeholders (`<name>`), `$VARS`, absolute paths, data folders (`lfw-chips150/`),
    and folders under bench/results/ (the earlier runs, kept in the archive tag RESULTS.md names)."""
    text = doc.read_text(encoding="utf-8")
    out: list[tuple[int, str, Path]] = []
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    for m in re.finditer(r"(?<!`)`([^`\s]+)`(?!`)", text):
        cited = m[1].rstrip(".,;:")
        first = cited.split("/")[0]
        if "/" not in cited or "<" in cited or cited.startswith(("$", "/", "~")) or "://" in cited:
            continue
        if cited.startswith(COMMITTED_ROOTS):
            if re.fullmatch(r"bench/results/[^/]+/", cited):
                continue
            base = REPO
        elif first in packages or first == "puface":
            if not (cited.endswith(("/", ".py", ".toml", ".safetensors")) or "*" in cited):
                continue
            base = REPO / "src" if first == "puface" else PACKAGE
        else:
            continue
        out.extend((text.count("\n", 0, m.start()) + 1, cited, base / c) for c in _braces(cited))
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        target = m[1].split("#")[0]
        if target and "://" not in target and not target.startswith("mailto:"):
            out.append((text.count("\n", 0, m.start()) + 1, target, doc.parent / target))
    return out


@pytest.mark.parametrize("name", ["README.md", "docs/RESULTS.md", "docs/ARCHITECTURE.md"])
def test_the_paths_the_docs_cite_are_in_the_repository(name):
    cited = cited_paths(REPO / name)
    assert cited  # the check reads something
    missing = [f"{name}:{line}: {text}" for line, text, path in cited
               if not (path.exists() if "*" not in path.name else any(path.parent.glob(path.name)))]
    assert not missing, "\n".join(missing)


def test_earlier_runs_are_where_the_docs_say():
    """The bench/results/<name>/ folders the path check leaves out are in the archive RESULTS.md names."""
    assert "`bench/results/<name>/` (runs with earlier purifiers) are kept in the git tag" in (
        REPO / "docs" / "RESULTS.md").read_text(encoding="utf-8")


def test_a_missing_path_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("See `docs/results/lfw-no-such/` and `defenses/no_such.py`, [t](no-such.md), `runs/x/`.\n")
    cited = {text: path.exists() for _, text, path in cited_paths(doc)}
    assert cited == {"docs/results/lfw-no-such/": False, "defenses/no_such.py": False, "no-such.md": False}

"""TOML config files: reading, `extends`, list edits, the packaged configs, and writing the subset back.

One mechanism for experiment configs and purifier training configs::

    extends = "lfw"                  # a file next to this one, or a packaged config's name
    name = "lfw-sface-mid"           # name and description are never inherited

    [users]
    count = 10                       # tables merge key by key (the rest of the parent's [users] stays)

    [[attacks]]                      # lists and arrays of tables replace the parent's whole list ...
    name = "fawkes"

    drop_attacks = ["lowkey-ensemble"]   # ... or edit it: leave out entries by label,
    [[add_attacks]]                      #     then append these (drop_<key> / add_<key> for any list key)
    name = "lowkey"

Packaged configs live in the package (`puface/configs/*.toml`: experiments; `puface/configs/purifier/
*.toml`: purifier recipes) and are found by name ("lfw", "default").
"""

from __future__ import annotations

import json
import re
import sys
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping

from .errors import ConfigError
from .paths import package_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "tomllib",
    "read_toml",
    "read_json_object",
    "apply_overrides",
    "parse_toml_value",
    "clear_optional",
    "refuse_unknown",
    "NONE_WORD",
    "packaged_config",
    "config_label",
    "packaged_config_names",
    "find_config",
    "extends_chain",
    "resolve_chain",
    "merge_configs",
    "apply_list_edits",
    "load_toml_config",
    "to_toml",
    "KINDS",
    "config_where",
    "commented_commands",
    "command_making",
]

#: kind -> folder of the packaged configs of that kind, inside the package
KINDS = {"experiment": "configs", "purifier": "configs/purifier", "detector": "configs/detector"}
NOT_INHERITED = ("name", "description", "extends")

Labeller = Callable[[dict], str]


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file as a dict; `ConfigError` naming the file when it is missing or not valid TOML."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def read_json_object(path: str | Path, expected: str = "a JSON object") -> dict[str, Any]:
    """The JSON file holding one object, as a dict (a run's saved config, a model's sidecar); `ConfigError` naming
    the file when it cannot be read, is not valid JSON, or holds something else (the message says `expected`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {expected}")
    return data


def parse_toml_value(text: str) -> Any:
    """A TOML value written on a command line (``--set train.epochs=2``); bare words stay strings (`none` too:
    `clear_optional` reads it where the setting takes None)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


#: `--set KEY=none`: TOML has no null, so this word (any case) is how a command line clears an optional setting
NONE_WORD = "none"


def clear_optional(overrides: Mapping[str, Any] | None, takes_none: Callable[[str], bool]) -> dict[str, Any]:
    """`overrides` ("section.key" -> value) with the text `none` made None where `takes_none(key)`: the setting is
    optional and None is its "not set" state (``--set data.max_per_identity=none``: every image, whatever the file
    says). Elsewhere `none` stays text, for the config's own checks to take or refuse. The one rule of every
    config loader that takes `--set`."""
    return {k: None if isinstance(v, str) and v.lower() == NONE_WORD and takes_none(k) else v
            for k, v in (overrides or {}).items()}


def refuse_unknown(d: Mapping[str, Any], known: Iterable[str], where: str | None = None) -> None:
    """A `ConfigError` when `d` holds keys outside `known` (a typo must not fall back to a default): "unknown
    option(s) in WHERE: ... (known: ...)", or "unknown top-level option(s): ..." without `where`."""
    known = set(known)
    unknown = set(d) - known
    if unknown:
        what = f"option(s) in {where}" if where is not None else "top-level option(s)"
        raise ConfigError(f"unknown {what}: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")


def _folder(kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}")
    return resources.files("puface").joinpath(KINDS[kind])


def packaged_config_names(kind: str = "experiment") -> list[str]:
    """Names of the configs of `kind` shipped inside the package."""
    try:
        return sorted(p.name[:-5] for p in _folder(kind).iterdir() if p.name.endswith(".toml"))
    except (FileNotFoundError, NotADirectoryError, ModuleNotFoundError):
        return []


def packaged_config(name: str, kind: str = "experiment") -> Path | None:
    """A packaged config by name ("lfw") or file name ("lfw.toml"), or None."""
    stem = Path(name).name
    stem = stem[:-5] if stem.endswith(".toml") else stem
    if not _folder(kind).joinpath(f"{stem}.toml").is_file():
        return None
    return package_file(*KINDS[kind].split("/"), f"{stem}.toml")  # on disk, from a zip archive too


def config_label(path: Path, kind: str = "experiment") -> str:
    """How a saved file names config `path`: a packaged config of `kind` by its place in the package
    ("puface/configs/lfw.toml", the same on every install and machine), any other file as given."""
    packaged = packaged_config(path.name, kind) if path.name.endswith(".toml") else None
    try:
        if packaged is not None and packaged.samefile(path):
            return f"puface/{KINDS[kind]}/{packaged.name}"
    except OSError:
        pass
    return str(path)


def find_config(ref: str | Path, kind: str = "experiment", *, relative_to: Path | None = None) -> Path:
    """A config file: `ref` as a path (relative to `relative_to`'s folder when given), else a packaged
    config of `kind` by name. `ConfigError` listing the packaged names otherwise."""
    p = Path(ref).expanduser()
    if relative_to is not None and not p.is_absolute():
        p = relative_to.parent / p
    if p.is_file():
        return p
    packaged = packaged_config(str(ref), kind)
    if packaged is not None:
        return packaged
    names = ", ".join(packaged_config_names(kind)) or "(none)"
    where = f" (named in {relative_to})" if relative_to is not None else ""
    raise ConfigError(
        f"{ref}: config file not found{where}, and no packaged {kind} config has that name (packaged: {names})"
    )


def extends_chain(path: Path, kind: str = "experiment") -> list[tuple[Path, dict[str, Any]]]:
    """[(path, its TOML), (its parent, ...), ...], each file read once; a cycle is a `ConfigError`."""
    chain = [(path, read_toml(path))]
    while "extends" in chain[-1][1]:
        last, raw = chain[-1]
        ref = raw["extends"]
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{last}: extends must be a config file or name, got {ref!r}")
        parent = find_config(ref, kind, relative_to=last)
        if any(parent.resolve() == c.resolve() for c, _ in chain):
            raise ConfigError(
                f"{path}: extends goes round in a circle: {' -> '.join(str(c) for c, _ in chain)} -> {parent}"
            )
        chain.append((parent, read_toml(parent)))
    return chain


def _merge_tables(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(parent)
    for k, v in child.items():
        out[k] = _merge_tables(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_list_edits(
    raw: dict[str, Any], labels: Mapping[str, Labeller] | None = None, where: str = "config"
) -> dict[str, Any]:
    """Apply ``drop_<key> = [labels]`` and ``[[add_<key>]]`` to the list `raw[key]` (in that order) and
    remove the edit keys. Entries are matched by `labels[key](entry)` (default: the entry's `label`, else
    its `name`); dropping a label that is not there is a `ConfigError`."""
    out = dict(raw)
    keys = {k.split("_", 1)[1] for k in raw if k.startswith(("drop_", "add_")) and "_" in k}
    for key in sorted(keys):
        drop, add = out.pop(f"drop_{key}", []), out.pop(f"add_{key}", [])
        if not isinstance(drop, list) or not isinstance(add, list):
            raise ConfigError(f"{where}: drop_{key} must be a list of labels and add_{key} an array of tables")
        label = (labels or {}).get(key) or (lambda e: str(e.get("label") or e.get("name", "?")))
        items = [dict(e) for e in out.get(key) or []]
        have = [label(e) for e in items]
        missing = [d for d in drop if d not in have]
        if missing:
            raise ConfigError(f"{where}: drop_{key} names {', '.join(map(repr, missing))}, not among its {key} "
                              f"({', '.join(have) or 'none'})")
        out[key] = [e for e, lab in zip(items, have) if lab not in set(drop)] + [dict(e) for e in add]
    return out


def merge_configs(parent: dict[str, Any], child: dict[str, Any], labels: Mapping[str, Labeller] | None = None,
                  where: str = "config") -> dict[str, Any]:
    """`child` on top of `parent`: tables merge key by key (recursively); scalars, lists and arrays of
    tables in the child replace the parent's; then the child's list edits (`apply_list_edits`) apply.
    `name`, `description` and `extends` are the child's only."""
    base = {k: v for k, v in parent.items() if k not in NOT_INHERITED}
    edits = {k: v for k, v in child.items() if k.startswith(("drop_", "add_"))}
    plain = {k: v for k, v in child.items() if k != "extends" and k not in edits}
    return apply_list_edits({**_merge_tables(base, plain), **edits}, labels, where)


def resolve_chain(
    chain: list[tuple[Path, dict[str, Any]]], labels: Mapping[str, Labeller] | None = None
) -> dict[str, Any]:
    """An `extends_chain` folded into one config dict."""
    raw = apply_list_edits(chain[-1][1], labels, str(chain[-1][0]))
    for path, child in reversed(chain[:-1]):
        raw = merge_configs(raw, child, labels, str(path))
    return raw


def load_toml_config(ref: str | Path, kind: str = "experiment", labels: Mapping[str, Labeller] | None = None
                     ) -> tuple[Path, dict[str, Any], list[tuple[Path, dict[str, Any]]]]:
    """(the file, the resolved config dict, its extends chain) for a path or packaged name."""
    path = find_config(ref, kind)
    chain = extends_chain(path, kind)
    return path, resolve_chain(chain, labels), chain


def _override_step(tgt: Any, part: str, key: str, where: str, rest: str) -> Any:
    """One step of an override's dotted key: into a table (made when missing), or into an array of tables' entry by
    its index; anything else is a `ConfigError` saying how to write the key."""
    if isinstance(tgt, dict):
        return tgt.setdefault(part, {})
    if isinstance(tgt, list):
        if part.isdigit() and int(part) < len(tgt) and isinstance(tgt[int(part)], dict):
            return tgt[int(part)]
        raise ConfigError(f"--set {key}: {where} is a list of {len(tgt)} entries; pick one by its index"
                          + (f", 0 to {len(tgt) - 1} (e.g. {where}.0.{rest})" if tgt else "")
                          + ", or give the whole list as TOML")
    raise ConfigError(f"--set {key}: {where} is a value ({tgt!r}), not a table")


def apply_overrides(d: dict[str, Any], overrides: Mapping[str, Any] | None = None,
                    data_root: str | Path | None = None) -> dict[str, Any]:
    """`d` with "section.key" -> value overrides set in place (tables made as needed) and, when given,
    `[data] root` replaced by `data_root` (the `--set` and `--data` options of the training commands).
    A number after an array of tables picks one entry ("attacks.0.images" -> 20: the first [[attacks]]); a
    key that goes through a list without one, or through a value, is a `ConfigError` naming the key."""
    for key, value in (overrides or {}).items():
        parts = key.split(".")
        tgt: Any = d
        for i, p in enumerate(parts[:-1]):
            tgt = _override_step(tgt, p, key, ".".join(parts[:i]), ".".join(parts[i + 1:]))
        last = parts[-1]
        if isinstance(tgt, list) and last.isdigit() and int(last) < len(tgt):
            tgt[int(last)] = value  # a whole entry, as a TOML inline table
        elif isinstance(tgt, dict):
            tgt[last] = value
        else:
            _override_step(tgt, "", key, ".".join(parts[:-1]), last)
    if data_root is not None:
        d.setdefault("data", {})["root"] = str(data_root)
    return d


def config_where(path: str | Path, overrides: Mapping[str, Any] | None = None) -> str:
    """How an error names a config: its file, and the `--set` overrides put on top of it (a typo there is the
    user's, not the file's)."""
    sets = ", ".join(f"{k}={NONE_WORD if v is None else v}" for k, v in (overrides or {}).items())
    return f"{path} with --set {sets}" if sets else str(path)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
        )
    return json.dumps(str(v))


def to_toml(raw: dict) -> str:
    """The TOML subset configs use: scalars, lists, [tables], [[arrays of tables]] and inline tables."""
    lines = []
    for k, v in raw.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(isinstance(x, dict) for x in v)):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in raw.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None]
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            for item in v:
                lines += ["", f"[[{k}]]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in item.items() if vv is not None]
    return "\n".join(lines) + "\n"


#: a comment line that starts a shell command: any VAR=value, then one of these programs
# a command, not prose about one ("puface demo: the whole pipeline ...")
_COMMAND_START = re.compile(r"(?:[A-Z_]+=\S*\s+)*(?:puface|python3?|bash|npm)\s+(?!\S*:(?:\s|$))")


def commented_commands(text: str) -> list[str]:
    """The shell commands written in a config file's comments (`text`: the file's text): a comment line that starts
    with `puface`, `python`, `bash` or `npm` (after any VAR=value), a trailing backslash continuing it on the next
    comment line; each as one line, in order."""
    out: list[str] = []
    cur: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            cur = None
            continue
        body = stripped.lstrip("#").strip()
        if cur is None and not _COMMAND_START.match(body):
            continue
        cur = body if cur is None else f"{cur} {body}"
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        out.append(cur)
        cur = None
    return out


def _names(path: tuple[str, ...], target: tuple[str, ...]) -> bool:
    """Whether `path` (a word of a command, split in parts) is `target`'s parts, or ends with them below a
    `$VARIABLE` (`$PUFACE_MODELS/faceres.pt`; not `runs/lfw-x`, another folder than `lfw-x`); a part `<name>` in
    `path` stands for any one name, but not for all of them (a bare `<name>` names nothing)."""
    head, tail = path[:len(path) - len(target)], path[len(path) - len(target):]
    wild = [(a[:1], a[-1:]) == ("<", ">") for a in tail]
    return (len(path) >= len(target) > 0 and not all(wild) and all(h.startswith("$") or h == "." for h in head)
            and all(a == b or w for a, b, w in zip(tail, target, wild)))


def _without_inputs(cmd: str) -> str:
    """`cmd` without the words it reads, which it does not make: a `--data DIR`, the config of `puface reproduce`
    or `evaluate`, and of two or more arguments right after a program (`python SCRIPT`, `bash SCRIPT`, `puface
    COMMAND`) before any option, all but the last (`make_set.py IN OUT`). Each part of `a && b` apart; read up to a
    trailing comment (" #") or a word in parentheses, and not past an option (its value may be quoted, with spaces)."""
    head, sep, tail = cmd.partition(" #")
    words = head.split()
    end = next((i for i, w in enumerate(words) if w.startswith("(")), len(words))
    drop = {i + 1 for i, w in enumerate(words[:end]) if w == "--data"} | {
        i for i, w in enumerate(words[:end]) if w.startswith("--data=")}
    start = 0
    while start < end:
        stop = next((i for i in range(start, end) if words[i] in ("&&", "||", ";", "|")), end)
        i = start
        while i < stop and re.fullmatch(r"[A-Z_]+=\S*", words[i]):  # VAR=value before the program
            i += 1
        program = words[i:i + 2]
        i += 2 if program[:1] in (["python"], ["python3"], ["bash"], ["puface"]) else 1
        args = []
        while i < stop and not words[i].startswith("-"):
            args.append(i)
            i += 1
        drop |= set(args if program in (["puface", "reproduce"], ["puface", "evaluate"]) else args[:-1])
        start = stop + 1
    kept = [w for i, w in enumerate(words) if i not in drop]
    return " ".join(kept) + (sep + tail if sep else "")


def command_making(named: str, files: Iterable[Path]) -> tuple[str, Path] | None:
    """The command in the comments of `files` (`commented_commands`) that makes the file `named` (as a config writes
    it: "runs/purifier-x/best.safetensors", "faceres.pt"): the first whose line (trailing comment included) names the
    file (`<name>` there stands for any one name), else whose command names the file's folder ("runs/purifier-x",
    "runs/published"), else a folder above it and the name just below that ("--only ref --out runs/ablations"). What
    a command reads is not a mention (`_without_inputs`: `--data DIR`, reproduce's config, IN of `SCRIPT IN OUT`).
    (The command without its trailing comment, its file), or None."""
    commands: list[tuple[str, Path]] = []
    for f in files:
        try:
            commands += [(c, Path(f)) for c in commented_commands(Path(f).read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError):
            continue

    def words(text: str) -> list[tuple[str, ...]]:
        return [PurePosixPath(w).parts for w in re.split(r"[\s\"'=,;()`]+", text) if w]

    target = PurePosixPath(named.replace("\\", "/")).parts
    lines = [(cmd.split(" #")[0].rstrip(), words(_without_inputs(cmd)), words(_without_inputs(cmd).split(" #")[0]), f)
             for cmd, f in commands]
    found = [(c, f) for c, line, _, f in lines if any(_names(w, target) for w in line)]
    if len(target) >= 3:  # a folder of two parts or more holds the file
        found += [(c, f) for c, _, cmd, f in lines if any(_names(w, target[:-1]) for w in cmd)]
    for n in range(len(target) - 2, 1, -1):  # a folder above, and the name below it in the command too
        found += [(c, f) for c, _, cmd, f in lines
                  if any(_names(w, target[:n]) for w in cmd) and (target[n],) in cmd]
    return found[0] if found else None

"""Just enough Dockerfile and .dockerignore parsing for the deployment checks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        op, _, args = line.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, its instructions), the global ARGs before the first FROM left out."""
    result: list[tuple[str, list[tuple[str, str]]]] = []
    for op, args in instructions():
        if op == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else words[0]
            result.append((name, []))
        elif result:
            result[-1][1].append((op, args))
    return result


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    found: dict[str, str] = {}
    for op, args in instructions():
        if op == "FROM":
            break
        if op == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            found[key] = value
    return found


def stage_args(stage: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, body in stages():
        if name == stage:
            for op, args in body:
                if op == "ARG" and "=" in args:
                    key, _, value = args.partition("=")
                    found[key] = value
    return found


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1][1]


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD / ENTRYPOINT / HEALTHCHECK CMD."""
    import json

    return json.loads(args[args.index("["):])


def image_port() -> int:
    (port,) = [int(a.split("/")[0]) for op, a in final_stage() if op == "EXPOSE"]
    return port


def copy_sources() -> list[str]:
    """Source paths of every COPY from the build context (not --from=stage)."""
    sources = []
    for _, body in stages():
        for op, args in body:
            if op != "COPY":
                continue
            words = shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            words = [w for w in words if not w.startswith("--")]
            sources.extend(words[:-1])
    return sources


# --- .dockerignore, with Docker's rules: last matching pattern wins, a pattern excluding a
# folder excludes what is below it, `*` does not cross `/`, `**` does.

def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(?:.*/)?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        rules.append((negate, _pattern(line)))
    return rules


def ignored(path: str) -> bool:
    """Whether `path` (relative to the repository root) stays out of the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in _rules():
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded

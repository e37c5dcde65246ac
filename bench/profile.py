"""What py-spy's collapsed stacks say: the top costs, in a markdown report.

Each sample is one stack (``frame;frame;...;innermost count``) of the thread holding
the GIL. The report lists, over every profiled process: the share of samples by kind
of code (aiohttp's server and client, the journal, routing, ...), then the functions
with the most samples of their own (self) and under them (inclusive)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

__all__ = ["summarize_profiles"]

_KINDS = (
    ("journal writer process", lambda f, s: "_sqlite_writer" in s or "_sqlite_ops" in s),
    ("aiohttp client (provider calls)", lambda f, s: "aiohttp/" in f and "channels/http.py" in s),
    ("aiohttp server", lambda f, s: "aiohttp/" in f or "multidict" in f or "yarl" in f),
    ("journal client", lambda f, s: "orchestrator/journal/" in f),
    ("metrics", lambda f, s: "prometheus_client" in f or "orchestrator/metrics.py" in f),
    ("logging and context", lambda f, s: "structlog" in f or "contextlib" in f or "contextvars" in f),
    ("validation (pydantic)", lambda f, s: "pydantic" in f or "api/schemas.py" in f),
    ("event loop (asyncio, uvloop)", lambda f, s: "asyncio/" in f or "uvloop" in f),
    ("routing", lambda f, s: "routing/" in f),
    ("health", lambda f, s: "health/" in f),
    ("pricing and risk", lambda f, s: "pricing" in f or "quotes" in f or "risk" in f),
    ("driver and state machine", lambda f, s: "orchestrator/driver.py" in f or "orchestrator/transitions.py" in f),
    ("API handlers", lambda f, s: "orchestrator/api/" in f),
    ("channel adapter", lambda f, s: "channels/" in f),
    ("other orchestrator code", lambda f, s: "orchestrator/" in f),
    ("dataclass constructors", lambda f, s: f == "<string>"),
)


_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("orchestrator", "channels", "routing", "health", "config")


def _project_files() -> dict[str, str]:
    """Bare file name -> its path in the project, for the names only one file has: py-spy
    gives some frames (orchestrator/api's, for one) as the bare file name."""
    seen: dict[str, list[str]] = {}
    for package in _PACKAGES:
        for f in (_ROOT / package).rglob("*.py"):
            seen.setdefault(f.name, []).append(str(f.relative_to(_ROOT)))
    return {name: paths[0] for name, paths in seen.items() if len(paths) == 1}


_BARE = _project_files()


def _path(frame: str) -> str:
    m = re.search(r"\(([^:()]+):\d+\)", frame)
    if not m:
        return frame
    return _BARE.get(m.group(1), m.group(1)) if "/" not in m.group(1) else m.group(1)


def _name(frame: str) -> str:
    """One entry per function, not per line, under its project path when py-spy gave a bare name."""
    m = re.search(r"\(([^:()]+):\d+\)", frame)
    if m and "/" not in m.group(1) and m.group(1) in _BARE:
        frame = frame.replace(f"({m.group(1)}:", f"({_BARE[m.group(1)]}:")
    return re.sub(r":\d+\)", ")", frame)




def summarize_profiles(profiles: list[tuple[str, Path]], title: str, top: int = 25) -> str:
    total = 0
    kinds: Counter[str] = Counter()
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    per_process: Counter[str] = Counter()
    for role, path in profiles:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            per_process[role] += n
            frames = stack.split(";")
            inner = frames[-1]
            kinds[next((k for k, test in _KINDS if test(_path(inner), stack)), "other")] += n
            own[_name(inner)] += n
            for f in {_name(f) for f in frames}:
                under[f] += n
    if not total:
        return f"# {title}\n\nNo samples (py-spy did not run?).\n"
    lines = [f"# {title}", "", f"{total} samples; by process: " +
             ", ".join(f"{role} {n / total:.0%}" for role, n in per_process.most_common()), "",
             "## By kind of code (innermost frame)", "", "| kind | share |", "| --- | ---: |"]
    lines += [f"| {k} | {n / total:.1%} |" for k, n in kinds.most_common()]
    lines += ["", f"## Top {top} functions, own samples", "", "| function | self |", "| --- | ---: |"]
    lines += [f"| `{f}` | {n / total:.1%} |" for f, n in own.most_common(top)]
    lines += ["", f"## Top {top} functions of the project, inclusive", "", "| function | inclusive |",
              "| --- | ---: |"]
    ours = [(f, n) for f, n in under.most_common() if re.search(r"\((orchestrator|channels|routing|health)/", f)]
    lines += [f"| `{f}` | {n / total:.1%} |" for f, n in ours[:top]]
    return "\n".join(lines) + "\n"

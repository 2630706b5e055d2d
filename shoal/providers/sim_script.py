"""What a simulated node makes of a command line: how long it "runs", its exit code, its output.

Nothing is executed. Two forms are understood:

- ``sim:duration=2.5,exit=3,stdout=hello%20world,stderr=oops,stdoutBytes=1048576``: every key
  optional (values percent-decoded; ``stdoutBytes`` makes a synthetic stdout of that many bytes);
- a small shell subset, optionally wrapped in ``/bin/sh -c '…'`` or ``bash -c "…"``: commands
  joined by ``;``, ``&&`` and ``||``, where ``sleep N[smhd]`` takes N seconds, ``exit [N]`` ends
  the script, ``true``/``:``//bin/true`` exit 0, ``false``//bin/false`` exit 1 and ``echo`` writes
  stdout. ``$NAME`` and ``${NAME}`` expand from the task's environment.

Any other command takes the pool's defaults (metadata ``shoal:simTaskDuration`` in seconds and
``shoal:simTaskExitCode``; 0 s and exit 0 when absent), so a pool of real command lines can be
simulated unchanged.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

DURATION_METADATA = "shoal:simTaskDuration"
EXIT_CODE_METADATA = "shoal:simTaskExitCode"
SIM_PREFIX = "sim:"
# A timer longer than this is as good as forever, and keeps float arithmetic finite.
MAX_DURATION_S = 10 * 365 * 86400.0
# A synthetic stdout is generated on read, never stored: cap it anyway at what a disk could hold.
MAX_SYNTHETIC_BYTES = 1 << 40
# Echoed output is stored; keep what one command line can make small.
MAX_STORED_OUTPUT_BYTES = 1 << 20
INT32 = (-(2**31), 2**31 - 1)
_SHELLS = {"sh", "bash", "dash", "/bin/sh", "/bin/bash", "/bin/dash", "/usr/bin/sh", "/usr/bin/bash"}
_TRUE = {"true", ":", "/bin/true", "/usr/bin/true"}
_FALSE = {"false", "/bin/false", "/usr/bin/false"}
_SLEEP = {"sleep", "/bin/sleep", "/usr/bin/sleep"}
_ECHO = {"echo", "/bin/echo", "/usr/bin/echo"}
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SLEEP_ARG = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# A background "&" or a pipe "|" runs the next command anyway: for timing, as ";".
_OPERATORS = {";", "&&", "||", "&", "|"}


@dataclass(frozen=True)
class Defaults:
    """A pool's stand-in for command lines the simulator does not understand."""

    duration_s: float = 0.0
    exit_code: int = 0

    @classmethod
    def from_metadata(cls, metadata: Any) -> Defaults:
        values = {item.get("name"): item.get("value") for item in metadata or [] if isinstance(item, dict)}
        duration = _number(values.get(DURATION_METADATA))
        code = _number(values.get(EXIT_CODE_METADATA))
        return cls(duration_s=_bounded_duration(duration) if duration is not None else 0.0,
                   exit_code=_int32(code) if code is not None and code == int(code) else 0)

    def to_json(self) -> dict[str, Any]:
        return {"durationS": self.duration_s, "exitCode": self.exit_code}

    @classmethod
    def from_json(cls, data: Any) -> Defaults:
        if not isinstance(data, dict):
            return cls()
        duration, code = _number(data.get("durationS")), _number(data.get("exitCode"))
        return cls(_bounded_duration(duration) if duration is not None else 0.0,
                   _int32(code) if code is not None and code == int(code) else 0)


@dataclass(frozen=True)
class Outcome:
    duration_s: float
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    # When set, stdout is this many bytes of a repeating pattern, made up on read.
    synthetic_stdout_bytes: int | None = None


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _bounded_duration(seconds: float) -> float:
    return min(max(0.0, seconds), MAX_DURATION_S)


def _int32(value: float) -> int:
    return int(min(max(value, INT32[0]), INT32[1]))


def outcome_of(command_line: str, defaults: Defaults = Defaults(),
               environment: Mapping[str, str] | None = None) -> Outcome:
    """What running ``command_line`` would look like; never raises."""
    text = command_line.strip()
    if text.startswith(SIM_PREFIX):
        return _sim_form(text[len(SIM_PREFIX):])
    return _shell(text, defaults, environment or {}, depth=0)


def _sim_form(spec: str) -> Outcome:
    duration, code = 0.0, 0
    stdout, stderr = b"", b""
    synthetic: int | None = None
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, raw = item.partition("=")
        value = unquote(raw)
        number = _number(value)
        if not sep:
            return _usage(f"sim: {key!r} has no value")
        if key == "duration" and number is not None:
            duration = _bounded_duration(number)
        elif key == "exit" and number is not None and number == int(number):
            code = _int32(number)
        elif key == "stdout":
            stdout = value.encode()[:MAX_STORED_OUTPUT_BYTES]
        elif key == "stderr":
            stderr = value.encode()[:MAX_STORED_OUTPUT_BYTES]
        elif key == "stdoutBytes" and number is not None and number >= 0:
            synthetic = int(min(number, MAX_SYNTHETIC_BYTES))
        else:
            return _usage(f"sim: cannot use {item[:100]!r}")
    return Outcome(duration, code, stdout, stderr, synthetic)


def _usage(message: str) -> Outcome:
    # As a shell reports a usage error: exit 2 at once, the reason on stderr.
    return Outcome(0.0, 2, b"", (message + "\n").encode())


def _expand(text: str, environment: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: environment.get(m.group(1) or m.group(2), ""), text)


def _tokens(text: str) -> list[str] | None:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: not a script we can read
        return None


def _commands(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """(operator before it, words) for each command; the first has operator ';'."""
    out: list[tuple[str, list[str]]] = []
    operator, words = ";", list[str]()
    for token in tokens:
        if token in _OPERATORS:
            out.append((operator, words))
            operator, words = token, []
        else:
            words.append(token)
    out.append((operator, words))
    return [(op, w) for op, w in out if w]


def _shell(text: str, defaults: Defaults, environment: Mapping[str, str], depth: int) -> Outcome:
    tokens = _tokens(text)
    if not tokens:
        return Outcome(defaults.duration_s, defaults.exit_code) if tokens is None else Outcome(0.0, 0)
    if len(tokens) >= 3 and tokens[0] in _SHELLS and tokens[1] == "-c" and depth < 3:
        return _shell(tokens[2], defaults, environment, depth + 1)
    duration, status = 0.0, 0
    stdout = bytearray()
    for operator, words in _commands(tokens):
        if (operator == "&&" and status != 0) or (operator == "||" and status == 0):
            continue
        words = [_expand(word, environment) for word in words]
        name, args = words[0], words[1:]
        if name in _TRUE:
            status = 0
        elif name in _FALSE:
            status = 1
        elif name in _SLEEP:
            seconds = _sleep_seconds(args)
            if seconds is None:
                status = 1
            else:
                duration, status = _bounded_duration(duration + seconds), 0
        elif name in _ECHO:
            if len(stdout) < MAX_STORED_OUTPUT_BYTES:
                stdout.extend((" ".join(args) + "\n").encode())
            status = 0
        elif name == "exit":
            code = _number(args[0]) if args else status
            status = int(code) % 256 if code is not None and code == int(code) else 2
            break
        else:
            duration = _bounded_duration(duration + defaults.duration_s)
            status = defaults.exit_code
    return Outcome(duration, status, bytes(stdout[:MAX_STORED_OUTPUT_BYTES]))


def _sleep_seconds(args: list[str]) -> float | None:
    """GNU sleep: the sum of its arguments, each a number with an optional unit."""
    if not args:
        return None
    total = 0.0
    for arg in args:
        if arg in ("inf", "infinity"):
            return MAX_DURATION_S
        match = _SLEEP_ARG.fullmatch(arg)
        if match is None:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
    return total

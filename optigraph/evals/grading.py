"""Grading a model's response against a problem's answer.

- `number`: the answer the response commits to (`\\boxed{}`, "Final answer: X", "the answer is X",
  "#### X", else the last number; see `optigraph.core.answers`) is read as a number, ignoring
  thousands separators, currency signs, percent signs and trailing units ("30.50 dollars"); after an
  `=` only the right-hand side counts; `a/b` is a fraction. Equal within a relative 1e-6. When the
  `math-verify` package is installed it gets a second look at answers that did not compare equal
  (LaTeX such as `\\frac{61}{2}` or `3\\sqrt{2}`).
- `exact`: the normalised answer equals the expected text or one of its aliases (case, markdown,
  surrounding punctuation ignored), or a short answer (at most 5 words: "Carol owns the dog")
  contains it as whole words. Without a "Final answer:"-style line, the last line is the answer.
- `choice`: a letter ("B", "(B)", "B) text", "**B**", "option B"), or the text of an option when the
  problem lists its `choices`.
- `code`: the last fenced code block (preferring one with a `def`) is run with the problem's tests
  appended, in `optigraph.sandbox` (a confined process: no network, no files outside its temp dir,
  only the sandbox's allowlisted imports); it passes when the program exits with 0. Where the
  sandbox lacks a layer its level requires, nothing runs and the grade is wrong with a detail that
  starts "not run:" (never an unconfined run).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from fractions import Fraction

from optigraph.core.answers import extract_answer, normalize_answer, strip_think
from optigraph.evals.problems import Problem
from optigraph.sandbox import (
    DEFAULT_LEVEL,
    SandboxLevel,
    SandboxResult,
    SandboxUnavailable,
    run_python,
)

REL_TOLERANCE = 1e-6
CODE_TIMEOUT_S = 10.0

_NUMBER_TOKEN = re.compile(r"-?\d+(?:,\d{3})+(?:\.\d+)?|-?\d*\.\d+|-?\d+(?:\s*/\s*-?\d+)?")
_CHOICE_LEAD = re.compile(r"^\W*(?:option\s+|choice\s+)?\(?\**([A-Z])\**\)?(?=[).:\s,]|$)", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_LATEX_WRAP = re.compile(r"\\[(\[]|\\[)\]]|\$")
# An expected answer that is a number and nothing else ("1,200", "-0.5", "3/4", "\\frac{3}{4}", "25%");
# other expected answers ("3\\sqrt{2}") are never compared by their first number alone.
_PLAIN_NUMBER = re.compile(
    r"\s*-?\$?\s*(?:(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?|\\[dt]?frac\{\d+\}\{\d+\})\s*%?\s*"
)
_LABEL = re.compile(r"^[\s*_]*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?[\s*_]*:[\s*_]*", re.IGNORECASE)


def _answer(response: str) -> str | None:
    """The committed answer (see `extract_answer`), without a repeated label: "the final answer is:
    Final answer: 7" gives "7", not "Final answer: 7"."""
    found = extract_answer(response)
    if found is None:
        return None
    answer = found.answer
    while (m := _LABEL.match(answer)) and m.end() < len(answer):
        answer = answer[m.end() :]
    return answer.strip()


@dataclass(frozen=True)
class Grade:
    """Whether a response is right, the answer read from it, and how it was judged."""

    correct: bool
    answer: str | None
    method: str  # numeric | math_verify | exact | choice | code | none
    detail: str | None = None


def math_verify_available() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


# -- numbers ---------------------------------------------------------------------------------------


def parse_number(text: str) -> Fraction | None:
    """The number an answer states: "1,234.5", "$30.50", "25%", "7.5 degrees", "x = 12", "3/4",
    "\\frac{61}{2}". None when there is no number in it."""
    s = _LATEX_WRAP.sub("", text).replace("\u2212", "-").replace("\\,", "").replace("{,}", ",")
    s = re.sub(r"\\(?:text|mathrm|textbf)\s*\{([^{}]*)\}", r"\1", s).replace("**", "")
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.strip()
    frac = re.match(r"(-?)\s*\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}", s)
    if frac:
        num, den = int(frac.group(2)), int(frac.group(3))
        if den == 0:
            return None
        return Fraction(num, den) * (-1 if frac.group(1) else 1)
    m = _NUMBER_TOKEN.search(s)
    if m is None:
        return None
    token = m.group(0).replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return Fraction(int(num), int(den)) if int(den) else None
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: Fraction, b: Fraction) -> bool:
    return abs(a - b) <= REL_TOLERANCE * max(1, abs(b))


def _math_verify(expected: str, answer: str) -> bool:
    from math_verify import parse, verify

    # math-verify's time limits use SIGALRM, which only the main thread may set.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(f"${expected}$", parsing_timeout=limit)
        pred = parse(answer if "$" in answer else f"${answer}$", parsing_timeout=limit)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=limit))
    except Exception:  # a parse it cannot finish is not a right answer
        return False


def grade_number(problem: Problem, response: str, *, use_math_verify: bool | None = None) -> Grade:
    answer = _answer(response)
    if answer is None:
        return Grade(False, None, "none", "no answer found")
    if _PLAIN_NUMBER.fullmatch(problem.answer):
        expected, got = parse_number(problem.answer), parse_number(answer)
        if expected is not None and got is not None and numbers_equal(got, expected):
            return Grade(True, answer, "numeric")
    elif normalize_answer(answer) == normalize_answer(problem.answer):  # "3\sqrt{2}" written the same way
        return Grade(True, answer, "numeric")
    if use_math_verify is None:
        use_math_verify = math_verify_available()
    if use_math_verify and _math_verify(problem.answer, answer):
        return Grade(True, answer, "math_verify")
    return Grade(False, answer, "math_verify" if use_math_verify else "numeric")


# -- text and choices ------------------------------------------------------------------------------


def _committed_text(response: str) -> str | None:
    """The answer a response commits to in words: an explicit answer, else its last line."""
    found = extract_answer(response)
    if found is not None and found.method not in ("last_number", "choice"):
        return _answer(response)
    lines = [line.strip() for line in strip_think(response).splitlines() if line.strip()]
    if lines:
        return lines[-1]
    return found.answer if found is not None else None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", normalize_answer(text))


def grade_exact(problem: Problem, response: str) -> Grade:
    answer = _committed_text(response)
    if answer is None:
        return Grade(False, None, "none", "no answer found")
    got = normalize_answer(answer)
    targets = [problem.answer, *problem.aliases]
    if any(got == normalize_answer(t) for t in targets):
        return Grade(True, answer, "exact")
    words = _words(answer)
    if len(words) <= 5:
        for target in targets:
            t = _words(target)
            if t and any(words[i : i + len(t)] == t for i in range(len(words) - len(t) + 1)):
                return Grade(True, answer, "exact", "contained")
    return Grade(False, answer, "exact")


def choice_letter(answer: str, choices: dict[str, str] | None = None) -> str | None:
    """The option letter an answer names, or None."""
    s = answer.strip()
    letters = set(choices) if choices else set("ABCDE")
    if len(s) == 1 and s.upper() in letters:
        return s.upper()
    m = _CHOICE_LEAD.match(s)
    if m:
        letter = m.group(1)
        # A lowercase "a" at the start is as likely the article as an option.
        if letter.isupper() or s.lstrip("(*").startswith(letter) and len(s.split()) == 1:
            if letter.upper() in letters:
                return letter.upper()
    if choices:
        norm = normalize_answer(s)
        for letter, text in choices.items():
            if norm == normalize_answer(text):
                return letter
    return None


def grade_choice(problem: Problem, response: str) -> Grade:
    answer = _committed_text(response)
    candidates = [a for a in (answer, _answer(response)) if a]
    for candidate in candidates:
        letter = choice_letter(candidate, problem.choices or None)
        if letter is not None:
            return Grade(letter == problem.answer.strip().upper(), letter, "choice")
    return Grade(False, answer, "choice", "no option letter found")


# -- code ------------------------------------------------------------------------------------------


def extract_code(response: str) -> str | None:
    """The code a response offers: the last fenced block with a `def` (else the last block), or the
    whole response when it has no fence but looks like Python."""
    body = strip_think(response)
    blocks = [(lang.lower(), code) for lang, code in _FENCE.findall(body) if code.strip()]
    if blocks:
        python = [code for lang, code in blocks if lang in ("", "python", "py", "python3")] or [c for _, c in blocks]
        with_def = [code for code in python if re.search(r"^\s*(?:async\s+)?def\s", code, re.MULTILINE)]
        return (with_def or python)[-1]
    if re.search(r"^\s*(?:def|class|import|from)\s", body, re.MULTILINE):
        return body
    return None


@dataclass(frozen=True)
class CodeRun:
    ok: bool
    detail: str | None = None


def _failure(stderr: str, returncode: int | None) -> str:
    """The exception line of a traceback and the source line it came from ("AssertionError at:
    assert f(2) == 4"); the exit status when there is no traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return f"exit status {returncode}"
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    source = lines[frames[-1] + 1].strip() if frames and frames[-1] + 1 < len(lines) - 1 else ""
    return (f"{lines[-1]} at: {source}" if source else lines[-1])[:300]


def _read_sandbox_result(result: SandboxResult, timeout_s: float) -> CodeRun:
    """A `SandboxResult` as a pass or a failure with its reason."""
    if result.ok:
        return CodeRun(True)
    if result.error_kind == "timeout":
        return CodeRun(False, f"timed out after {timeout_s:g} s")
    if result.error_kind == "memory":
        return CodeRun(False, "out of memory")
    if result.error_kind == "forbidden" and result.violations:
        return CodeRun(False, f"refused by the sandbox: {result.violations[0]}"[:300])
    return CodeRun(False, _failure(result.stderr, result.exit_code))


async def run_tests(
    code: str,
    tests: tuple[str, ...] | list[str],
    *,
    timeout_s: float = CODE_TIMEOUT_S,
    sandbox_level: SandboxLevel = DEFAULT_LEVEL,
) -> CodeRun:
    """Runs `code` followed by `tests` in the sandbox at `sandbox_level`; ok when the program exits
    with 0. When the sandbox lacks a layer that level requires, nothing runs and the run fails with
    a detail that starts "not run:" and names the missing layers."""
    program = code.rstrip() + "\n\n\n" + "\n".join(tests) + "\n"
    try:
        result = await run_python(program, timeout_s=timeout_s, level=sandbox_level)
    except SandboxUnavailable as refusal:
        missing = ", ".join(f"{name} ({why})" for name, why in refusal.missing.items())
        return CodeRun(False, f"not run: sandbox level {sandbox_level!r} lacks {missing}"[:300])
    except Exception as exc:  # the sandbox itself failing (no temp dir, no pipes) is a failed run, reported
        return CodeRun(False, f"sandbox: {type(exc).__name__}: {exc}"[:300])
    return _read_sandbox_result(result, timeout_s)


async def grade_code(
    problem: Problem, response: str, *, timeout_s: float = CODE_TIMEOUT_S, sandbox_level: SandboxLevel = DEFAULT_LEVEL
) -> Grade:
    code = extract_code(response)
    if code is None:
        return Grade(False, None, "none", "no code found")
    run = await run_tests(code, problem.tests, timeout_s=timeout_s, sandbox_level=sandbox_level)
    return Grade(run.ok, code, "code", run.detail)


async def grade(
    problem: Problem,
    response: str | None,
    *,
    use_math_verify: bool | None = None,
    sandbox_level: SandboxLevel = DEFAULT_LEVEL,
) -> Grade:
    """Grades one response (None or empty: wrong, no answer); code runs in the sandbox at
    `sandbox_level`."""
    if not response or not response.strip():
        return Grade(False, None, "none", "empty response")
    if problem.grader == "number":
        return grade_number(problem, response, use_math_verify=use_math_verify)
    if problem.grader == "exact":
        return grade_exact(problem, response)
    if problem.grader == "choice":
        return grade_choice(problem, response)
    return await grade_code(problem, response, sandbox_level=sandbox_level)

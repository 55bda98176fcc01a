"""Path patterns: globs with ``*`` and ``**``, ``re:`` regexes, and predicates."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

PathPredicate = Callable[[str, Any], bool]


Pattern = str | PathPredicate


def _segment_to_regex(segment: str) -> str:
    out = []
    for ch in segment:
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def glob_to_regex(glob: str) -> str:
    """Translates a path glob into a full-match regular expression.

    ``*`` matches any run of characters inside one segment, ``?`` one character inside a
    segment, and a whole segment ``**`` matches any number of segments, none included:
    ``**/kernel`` matches ``kernel`` and ``params/Block_1/Dense_0/kernel``.

    Args:
      glob: the pattern, segments separated by ``/``.

    Returns:
      A regular expression string, to be used with `re.fullmatch`.

    Raises:
      ValueError: if the glob is empty or uses ``**`` inside a segment (``a**b``).

    Example:
      >>> import re
      >>> bool(re.fullmatch(glob_to_regex("**/kernel"), "kernel"))
      True
      >>> bool(re.fullmatch(glob_to_regex("params/*/bias"), "params/Dense_0/bias"))
      True
    """
    if not glob:
        raise ValueError("A path pattern must be a non-empty string, got ''.")
    segments = []
    for seg in glob.split("/"):
        # A run of '**' segments means the same as one (and would otherwise break the
        # trailing-'**' rule below, which assumes the segment before it is a plain one).
        if not (seg == "**" and segments and segments[-1] == "**"):
            segments.append(seg)
    parts: list[str] = []
    n = len(segments)
    for i, seg in enumerate(segments):
        if seg == "**":
            if n == 1:
                parts.append(".*")
            elif i == n - 1:
                parts.append("(?:/[^/]+)*")
            else:
                parts.append("(?:[^/]+/)*")
            continue
        if "**" in seg:
            raise ValueError(
                f"Invalid path pattern {glob!r}: '**' must be a whole segment (as in "
                f"'**/kernel'), found it inside segment {seg!r}."
            )
        regex = _segment_to_regex(seg)
        if i < n - 1:
            regex += "/"
        # A trailing '**' supplies its own leading '/'.
        parts.append(regex)
    if n > 1 and segments[-1] == "**":
        # The segment before '**' added a '/', which '(?:/[^/]+)*' already provides.
        parts[-2] = parts[-2][:-1]
    return "".join(parts)


def compile_pattern(pattern: Any) -> tuple[str, PathPredicate]:
    """Turns a user pattern into ``(description, predicate(path, leaf) -> bool)``.

    Args:
      pattern: a glob string, a string ``"re:<regex>"`` (full match), or a callable
        ``(path, leaf) -> bool``.

    Returns:
      A printable description of the pattern and the predicate.

    Raises:
      ValueError: for an empty pattern, a malformed glob, or a regex that does not compile.
      TypeError: for anything that is neither a string nor a callable.
    """
    if isinstance(pattern, str):
        if pattern.startswith("re:"):
            source = pattern[3:]
            if not source:
                raise ValueError(f"Path pattern {pattern!r} has an empty regular expression.")
            try:
                compiled = re.compile(source)
            except re.error as e:
                raise ValueError(
                    f"Path pattern {pattern!r} is not a valid regular expression: {e}."
                ) from None
        else:
            compiled = re.compile(glob_to_regex(pattern))
        return pattern, lambda path, leaf: compiled.fullmatch(path) is not None
    if callable(pattern):
        name = getattr(pattern, "__name__", None) or type(pattern).__name__
        # A user's predicate, documented as (path, leaf) -> bool.
        return f"<callable {name}>", cast(PathPredicate, pattern)
    raise TypeError(
        "A path pattern must be a glob string, a 're:' regex string, or a callable "
        f"(path, leaf) -> bool; got {pattern!r} of type {type(pattern).__name__}."
    )


def exact_pattern(path: str) -> str:
    """Returns a pattern matching exactly ``path``: the path itself when it is a plain glob.

    Paths with glob metacharacters (``*``, ``?``) or a ``re:`` prefix get an escaped
    ``re:`` regex instead.

    Example:
      >>> exact_pattern("params/Dense_0/kernel")
      'params/Dense_0/kernel'
      >>> exact_pattern("w*")
      're:w\\\\*'
    """
    if "*" in path or "?" in path or path.startswith("re:"):
        return "re:" + re.escape(path)
    return path

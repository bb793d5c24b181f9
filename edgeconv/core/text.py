"""Shortening text for messages: one rule everywhere a library's error or a tool's log is quoted."""


def shorten(text, limit=300, keep="head"):
    """``text`` cut to at most ``limit`` characters, with an ellipsis where it was cut. ``keep="head"`` keeps the
    start (an error's first words say what failed), ``"tail"`` the end (a tool's log ends with why it stopped)."""
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    if keep == "tail":
        return "…" + text[len(text) - limit + 1:]
    return text[: limit - 1] + "…"


def first_line(text, limit=300):
    """The first non-empty line of ``text``, shortened: how a library's multi-line error is quoted in one sentence."""
    lines = [ln.strip() for ln in str(text or "").strip().splitlines() if ln.strip()]
    return shorten(lines[0] if lines else "", limit)

"""File and class names as people read them: one printable line, whatever bytes they hold."""

from __future__ import annotations


def display_path(path: str) -> str:
    """``path`` as one printable line that names the file unambiguously: bytes that are not
    UTF-8 (kept by Python as surrogate escapes) shown as ``\\xNN``, newlines, tabs and other
    control characters escaped, and so a backslash shown doubled."""
    if "\\" not in path and path.isprintable():
        return path
    shown = []
    for char in path:
        if char == "\\":
            shown.append("\\\\")
        elif "\udc80" <= char <= "\udcff":          # a byte that is not UTF-8
            shown.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif not char.isprintable():
            shown.append(char.encode("unicode_escape").decode("ascii"))
        else:
            shown.append(char)
    return "".join(shown)

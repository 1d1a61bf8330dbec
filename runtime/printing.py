"""Numbers as people read them: the precision a value has, not its float noise. No imports: the entry points use
it before they load anything heavy."""
from __future__ import annotations


def printable(value, digits: int = 6):
    """`value` (a number, or dicts and lists of them) with each float at `digits` significant digits: what a
    measurement or a float32 mean holds, without float noise (0.30000000000000004 -> 0.3, 2.1029868125915527 ->
    2.10299). For printing; the files keep the full values."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: printable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v, digits) for v in value]
    return value

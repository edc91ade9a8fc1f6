"""Checking a CSV file's shape (seeds, source samples) with the csv module, before any engine reads it:
an engine's sniffer reports a ragged file as pages of guesses, never the line to fix."""

from __future__ import annotations

import csv
from pathlib import Path


def shape_problem(path: Path) -> tuple[str, int | None] | None:
    """(message, line) for the first problem: an empty file, or a row whose field count differs from
    the header's; None when every row has the header's width."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return "the CSV file is empty (it needs a header row)", 1
            for row in reader:
                if row and len(row) != len(header):
                    return f"row has {len(row)} field(s), the header has {len(header)}", reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"cannot read the CSV file: {exc}", None
    return None

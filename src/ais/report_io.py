"""Small report writers: CSV tables for `dvc plots`, atomically."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ais.atomic import write_text


def write_csv(path: Path | str, rows: list[dict]) -> None:
    """Rows of dicts as CSV (columns in first-seen order); None is written as an empty cell."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())

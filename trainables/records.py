"""What a local data file holds, read before anything starts (the driver's preflight reaches it
through trainables/contract.py): every row or record, streamed for tables, stdlib only. The
same rules the worker's readers apply (trainables/data.py, trainables/instruction_data.py),
found here in a second instead of in every trial."""
from __future__ import annotations

import csv
import string
from pathlib import Path
from typing import Any, Iterator, Sequence

from trainables.files import read_json_records

TABLES = (".csv", ".tsv")
JSON = (".json", ".jsonl")


def table_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(row number, fields) of a csv/tsv file, the header being row 1; the csv module's
    dialect the worker's reader expects (tsv: no quoting)."""
    tsv = path.suffix.lower() == ".tsv"
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        for number, row in enumerate(reader, start=1):
            if row:  # a blank line is no row
                yield number, row


def template_fields(template: str | None) -> list[str]:
    """The columns a source's `instruction`/`output` template reads ({answer} is the label)."""
    if not template:
        return []
    return [name for _, name, _, _ in string.Formatter().parse(template) if name and name != "answer"]


def instruction_record_problem(record: dict[str, Any]) -> str | None:
    """Why a record of an instruction file cannot be trained on, or None: it needs an
    `instruction` and the `output` it trains on, or (harness style) a `question` with
    `choices` and an `answer`."""
    if isinstance(record.get("choices"), list):
        if not str(record.get("question") or record.get("instruction") or "").strip():
            return "has `choices` but no `question` (or `instruction`)"
        if record.get("output") is None and record.get("answer") is None:
            return "has `choices` but no `answer` (the gold option or its index) and no `output`"
        return None
    if not str(record.get("instruction") or "").strip():
        return "has no `instruction` (or it is empty)"
    if record.get("output") is None:
        return "has no `output`, the answer the task trains on"
    return None


def data_problems(path: str | Path, *, fields: Sequence[str] = (), templates: Sequence[str | None] = (),
                  instructions: bool = False,
                  label_field: str | None = None, label_names: Sequence[str] | None = None,
                  limit: int = 5) -> list[str]:
    """Why the local data file `path` cannot feed the task, at most `limit` reasons ("row N:"
    counts a table's header as row 1, "record N:" counts from 1); [] when it can.

    - not UTF-8 text, not JSON records, or no rows / records at all;
    - a table row with more or fewer fields than its header;
    - `fields` (text and label columns) or the columns `templates` read, missing or empty;
    - `instructions`: records without an instruction and an output (instruction_record_problem);
    - `label_names`: a label that is not an index into them.
    A parquet file is checked for rows only (its schema by the column check)."""
    path = Path(path)
    suffix = path.suffix.lower()
    problems: list[str] = []
    fields = list(dict.fromkeys([*fields, *(name for t in templates for name in template_fields(t))]))
    try:
        if suffix == ".parquet":
            import pyarrow.parquet

            return [] if pyarrow.parquet.read_metadata(path).num_rows else ["holds no rows"]
        if suffix in TABLES:
            rows = table_rows(path)
            first = next(rows, None)
            if first is None:
                return ["is empty: no header, no rows"]
            header = first[1]
            records = ((number, row, dict(zip(header, row))) for number, row in rows)
            kind = "row"
        elif suffix in JSON:
            header = None
            records = ((number, None, record) for number, record in enumerate(read_json_records(path), start=1))
            kind = "record"
        else:
            return []
        count = 0
        for number, row, record in records:
            count += 1
            reason = None
            if row is not None and len(row) != len(header):
                reason = f"has {len(row)} fields, the header {len(header)}"
            elif instructions:
                reason = instruction_record_problem(record)
            if reason is None:
                missing = [name for name in fields if record.get(name) in (None, "")]
                if missing:
                    reason = f"has no value for {', '.join(map(repr, missing))}"
            if reason is None and label_names and label_field:
                reason = _label_problem(record.get(label_field), label_names)
            if reason:
                problems.append(f"{kind} {number} {reason}")
                if len(problems) >= limit:
                    break
        if not count:
            return ["has a header and no rows" if kind == "row" else "holds no records"]
    except UnicodeDecodeError as error:
        return [f"is not UTF-8 text (byte {error.start})"]
    except (ValueError, OSError, csv.Error) as error:  # json's errors are ValueErrors
        return [f"cannot be read: {error}"]
    return problems


def _label_problem(label: Any, names: Sequence[str]) -> str | None:
    """The worker writes label i as label_names[i] (instruction_data.answer_of)."""
    try:
        index = int(str(label).strip())
    except ValueError:
        return f"has label {label!r}, not an index into label_names {list(names)}"
    return None if 0 <= index < len(names) else f"has label {label!r}, beyond label_names {list(names)}"

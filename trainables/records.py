"""What a local data file holds, read before anything starts (the driver's preflight reaches it
through trainables/contract.py): every row or record, streamed for tables, stdlib only. The
same rules the worker's readers apply (trainables/data.py, trainables/instruction_data.py),
found here in a second instead of in every trial."""
from __future__ import annotations

import csv
import string
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from trainables.files import read_json_records

TABLES = (".csv", ".tsv")
JSON = (".json", ".jsonl")
VALIDATION_FRACTION = 0.1  # of what is left after the test split, when no validation file is given


def held_out_size(rows: int, fraction: float) -> int:
    """Records the test split takes from a training file of `rows` (trainables/data.py TestSplit)."""
    return max(1, round(fraction * rows))


def validation_size(rows: int) -> int:
    """Records the validation split takes from the `rows` left for training and validation."""
    return max(1, round(VALIDATION_FRACTION * rows))


def split_problem(rows: int, test_fraction: float, validation_file: bool) -> str | None:
    """Why a training file of `rows` records cannot be split as the worker splits it: the test
    split first (`test_fraction` > 0, at least 3 records), then validation from the rest when no
    validation file is given (at least 2), and at least one record left to train on."""
    rest = rows
    if test_fraction > 0:
        if rows < 3:
            return f"has {rows} record(s): carving a test split (task.test_fraction {test_fraction}) needs at least 3"
        rest -= held_out_size(rows, test_fraction)
    if not validation_file:
        if rest < 2:
            return (f"leaves {rest} record(s) after the test split: carving a validation split needs at least 2; "
                    "lower task.test_fraction, add records or give a validation file")
        rest -= validation_size(rest)
    if rest < 1:
        return f"leaves no record to train on after the test split of {rows - rest} (task.test_fraction {test_fraction})"
    return None


def label_kind(label: Any, from_table: bool) -> str:
    """What the worker's label encoding sorts a label as: a table's labels are text that may
    read as numbers; a JSON or parquet label keeps its type (1 and "1" are two classes)."""
    if from_table:
        try:
            float(str(label).strip())
            return "number"
        except ValueError:
            return "text"
    return "number" if isinstance(label, (int, float)) and not isinstance(label, bool) else type(label).__name__


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


def parquet_records(path: Path, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The records of a parquet file, `columns` only (those it has), a batch at a time."""
    import pyarrow.parquet

    source = pyarrow.parquet.ParquetFile(path)
    present = [c for c in columns if c in source.schema_arrow.names]
    if not present:
        yield from ({} for _ in range(source.metadata.num_rows))
        return
    for batch in source.iter_batches(columns=present, batch_size=8192):
        yield from batch.to_pylist()


def data_problems(path: str | Path, *, fields: Sequence[str] = (), templates: Sequence[str | None] = (),
                  instructions: bool = False,
                  label_field: str | None = None, label_names: Sequence[str] | None = None,
                  split: tuple[float, bool] | None = None, labels: set[str] | None = None,
                  rows: Iterable[dict[str, Any]] | None = None, limit: int = 5) -> list[str]:
    """Why the local data file `path` cannot feed the task, at most `limit` reasons ("row N:"
    counts a table's header as row 1, "record N:" counts from 1); [] when it can.

    - not UTF-8 text, not JSON records, or no rows / records at all;
    - a table row with more or fewer fields than its header;
    - `fields` (text and label columns) or the columns `templates` read, missing or empty;
    - `instructions`: records without an instruction and an output (instruction_record_problem);
    - `label_names`: a label that is not an index into them;
    - `label_field`: labels of more than one kind (`label_kind`: "positive" beside 1);
    - `split` (test_fraction, has a validation file), for a training file: too few records for
      the worker's test and validation splits (`split_problem`).
    `labels`, when given, receives every label value as text (the caller compares files).
    `rows`: the records themselves (a cached hub dataset's split), `path` naming them."""
    path = Path(path)
    suffix = path.suffix.lower()
    problems: list[str] = []
    fields = list(dict.fromkeys([*fields, *(name for t in templates for name in template_fields(t))]))
    try:
        if rows is not None:
            header, kind = None, "row"
            records = ((number, None, record) for number, record in enumerate(rows, start=1))
        elif suffix == ".parquet":
            header = None
            wanted = [*fields, *([label_field] if label_field else [])]
            records = ((number, None, record) for number, record in enumerate(parquet_records(path, wanted), start=1))
            kind = "row"
        elif suffix in TABLES:
            rows = table_rows(path)
            head = next(rows, None)
            if head is None:
                return ["is empty: no header, no rows"]
            header = head[1]
            records = ((number, row, dict(zip(header, row))) for number, row in rows)
            kind = "row"
        elif suffix in JSON:
            header = None
            records = ((number, None, record) for number, record in enumerate(read_json_records(path), start=1))
            kind = "record"
        else:
            return []
        count, first = 0, None
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
            if reason is None and label_field and record.get(label_field) not in (None, ""):
                value = record[label_field]
                if labels is not None:
                    labels.add(str(value).strip())
                this = (number, value, label_kind(value, row is not None))
                first = first or this
                if this[2] != first[2]:
                    reason = (f"has label {value!r} ({this[2]}), while {kind} {first[0]}'s is {first[1]!r} "
                              f"({first[2]}): labels must be of one kind")
            if reason:
                problems.append(f"{kind} {number} {reason}")
                if len(problems) >= limit:
                    break
        if not count:
            return ["has a header and no rows" if header is not None else f"holds no {kind}s"]
        if split is not None and not problems:
            reason = split_problem(count, *split)
            problems.extend([reason] if reason else [])
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

"""Raw rows of a dataset source, each with where it came from (for error messages).

    read_rows("train.jsonl", split_name="train")  -> [("train.jsonl:1", {...}), ...]

Sources: a JSONL file (`.jsonl`, `.json`, optionally `.gz`; a file holding one JSON array
also works), a parquet file, a Hugging Face `datasets` folder written by `save_to_disk`
(a `Dataset`, or a `DatasetDict` whose split `split_name` is read), or `hf:NAME` /
`hf:NAME:CONFIG`, a dataset by name through `datasets.load_dataset` (needs the hub or a
local cache). A line that is not JSON becomes a `BadRow` saying why; it is reported with
the other bad records, never dropped silently.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_rlvr.config import ConfigError

HF_PREFIX = "hf:"


class RecordProblem(ValueError):
    """A record that cannot be used; the message names the field and what was expected."""


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read at all (invalid JSON); `why` says what is wrong."""

    why: str


Rows = list[tuple[str, Any]]
"""(where, row): where is "FILE:LINE" for JSONL, "FILE record N" otherwise (1-based)."""


def read_rows(source: str, *, split_name: str, key: str = "data.source") -> Rows:
    """Every row of `source` in file order; `key` is the config key named in errors."""
    if source.startswith(HF_PREFIX):
        return _read_hub(source, split_name, key)
    path = Path(source)
    if path.is_dir():
        return _read_saved(path, split_name, key)
    if not path.is_file():
        raise ConfigError(f"{key}={source!r} is neither a built-in task ('arithmetic') nor an existing file "
                          f"or folder. Give a JSONL or parquet file of records {{\"prompt\": ..., \"env\": ..., "
                          f"<env fields>}}, a Hugging Face save_to_disk folder, or hf:NAME.")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"{path} record {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist(), 1)]
    return read_jsonl(path)


def read_jsonl(path: Path) -> Rows:
    """Rows of a JSON-lines file (gzipped when it ends in .gz); a file that is one JSON array is
    read as its elements. Blank lines are skipped; a line that is not JSON is a BadRow."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); give a JSONL file, "
                          f"a parquet file or a save_to_disk folder.") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            pass
        else:
            return [(f"{path} record {i}", r) for i, r in enumerate(items, 1)]
    out: Rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            out.append((f"{path}:{lineno}", BadRow(f"not valid JSON ({e.msg} at column {e.colno}); each "
                                                   f"line must be one JSON object")))
    return out


def _dataset_rows(ds: Any, label: str) -> Rows:
    return [(f"{label} record {i}", row) for i, row in enumerate(ds, 1)]


def _read_saved(path: Path, split_name: str, key: str) -> Rows:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{key}={str(path)!r} is a folder; reading Hugging Face datasets needs the "
                          f"`datasets` package: pip install 'nemo-rlvr[data]'.") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise ConfigError(f"{key}={str(path)!r} is a folder but not a dataset written by "
                          f"Dataset.save_to_disk ({e}); give that folder, or a JSONL/parquet file.") from None
    if isinstance(ds, datasets.DatasetDict):
        if split_name not in ds:
            raise ConfigError(f"{key}={str(path)!r} has no split {split_name!r}; it has "
                              f"{', '.join(map(repr, ds))}. Set data.split (training) or data.val_split "
                              f"(validation) to one of them.")
        return _dataset_rows(ds[split_name], f"{path} [{split_name}]")
    return _dataset_rows(ds, str(path))


def _read_hub(source: str, split_name: str, key: str) -> Rows:
    name, _, config = source.removeprefix(HF_PREFIX).partition(":")
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{key}={source!r} needs the `datasets` package: pip install 'nemo-rlvr[data]'.") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split_name)
    except Exception as e:  # offline, unknown name, unknown split: all the user's to fix
        raise ConfigError(f"{key}={source!r}: datasets.load_dataset({name!r}, split={split_name!r}) failed "
                          f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}). "
                          f"Check the name and data.split / data.val_split, or save the dataset with "
                          f"save_to_disk on a machine with hub access and give that folder.") from None
    return _dataset_rows(ds, f"{source} [{split_name}]")

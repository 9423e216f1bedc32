"""Finished shards on disk (issue 18, item 3): an interrupted campaign resumes where it stopped.

The file holds the campaign's identity (damage, seed, model digest, inputs, protection) and, per shard (its
first sample index), the shard's samples. It is rewritten whole after each shard, through a temporary file, so
an interrupt never leaves half a file; a file of another campaign is refused rather than mixed in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lesion.errors import LesionError

FORMAT = "lesion-campaign-shards"


class ShardStore:
    """Finished shards of one campaign, read from and written to `path`."""

    def __init__(self, path: str | Path, identity: dict[str, Any]) -> None:
        self.path = Path(path).expanduser()
        self.identity = json.loads(json.dumps(identity))
        self.shards: dict[int, list[dict[str, Any]]] = {}
        if self.path.exists():
            try:
                payload = json.loads(self.path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise LesionError(f"cannot read the campaign checkpoint {self.path}: {err}") from err
            if not isinstance(payload, dict) or payload.get("format") != FORMAT:
                raise LesionError(f"{self.path} is not a lesion campaign checkpoint")
            if payload.get("identity") != self.identity:
                raise LesionError(f"{self.path} holds shards of another campaign (damage, seed, model or its "
                                  "outputs, inputs, labels or protection differ); give another --checkpoint file")
            self.shards = _checked_shards(payload.get("shards"), self.path)
        self.by_index = {int(r["index"]): r for records in self.shards.values() for r in records}

    def get(self, start: int, stop: int) -> list[dict[str, Any]] | None:
        """Samples start … stop − 1 if every one of them finished before, from whichever shards hold them: a run
        with another number of samples or another batch size reuses what applies and no more (each sample is
        drawn from its own seed, so a sample is the same in any shard)."""
        if all(i in self.by_index for i in range(start, stop)):
            return [self.by_index[i] for i in range(start, stop)]
        return None

    def put(self, start: int, samples: list[dict[str, Any]]) -> None:
        """Record a finished shard (atomically)."""
        self.shards[start] = samples
        self.by_index.update((int(r["index"]), r) for r in samples)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "identity": self.identity,
                                   "shards": {str(k): v for k, v in sorted(self.shards.items())}}))
        tmp.replace(self.path)


RECORD_KEYS = frozenset({"index", "seed", "faults", "output_error", "accuracy", "loss"})  # a SampleResult's


def _checked_shards(shards: Any, path: Path) -> dict[int, list[dict[str, Any]]]:
    """The shards of a checkpoint file: whole-number keys, each a list of sample records; else a one-line
    refusal (an edited or damaged file)."""
    try:
        out = {int(k): v for k, v in shards.items()}
        valid = all(isinstance(records, list) and all(
            isinstance(r, dict) and RECORD_KEYS <= r.keys() and isinstance(r["index"], int) for r in records)
            for records in out.values())
    except (AttributeError, TypeError, ValueError):
        valid = False
    if not valid:
        raise LesionError(f"{path} is damaged: its shards are not lists of sample records; delete it to start again")
    return out

"""What the callback job scripts (``lightning_job.py``, ``hf_job.py``) share: their options and
where each rank's ``vramguard`` log records go. Imported as a sibling module: each script runs as
``python path/to/script.py`` (and again per rank), so its own folder is on ``sys.path``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import IO, Any


def job_arguments(*, share_option: bool) -> argparse.Namespace:
    """``--out``, ``--steps``, ``--check-every``, ``--leak-rank``, ``--guard KEY=JSON`` (repeated),
    ``--on-leak``, and ``--no-share`` where the job offers it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--leak-rank", type=int, default=-1)
    parser.add_argument("--guard", action="append", default=[])
    if share_option:
        parser.add_argument("--no-share", action="store_true")
    parser.add_argument("--on-leak", default="warn")
    return parser.parse_args()


def guard_options(items: list[str]) -> dict[str, Any]:
    """``--guard KEY=JSON`` items as Guard keyword arguments."""
    return {key: json.loads(value) for key, value in (item.split("=", 1) for item in items)}


def log_records_to(out: Path, rank: int) -> IO[str]:
    """Write the ``vramguard`` logger's records (INFO and up) to ``out``/rank{N}.log; the
    caller closes the file it returns at the end of the job."""
    records = (out / f"rank{rank}.log").open("w")
    handler = logging.StreamHandler(records)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("vramguard")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return records

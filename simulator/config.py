"""Where the simulator writes: the four source URLs, the data folder and its side files."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSTEMS = ("mis", "cs", "dist", "meter")
REPO = Path(__file__).resolve().parent.parent


def data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`DATA_DIR` if set, else <repo>/data (same rule as etl/settings.py)."""
    return Path(environ.get("DATA_DIR") or REPO / "data")


def source_urls(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`SOURCE_<NAME>_URL` for each system, defaulting to sqlite:///<data>/source_<name>.db."""
    folder = data_dir(environ)
    return {name: environ.get(f"SOURCE_{name.upper()}_URL") or f"sqlite:///{folder / f'source_{name}.db'}"
            for name in SYSTEMS}


def side_dir(urls: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> Path:
    """Folder for the state and bad-row files: next to the SQLite files, else DATA_DIR."""
    for url in urls.values():
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            return Path(url[len("sqlite:///"):]).parent
    return data_dir(environ)

"""Offline loading of DuckDB's sqlite and postgres scanners from their PyPI packages."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import duckdb

from etl.errors import EtlError

# scanner name DuckDB loads -> (PyPI package module, file inside the package)
SCANNERS = {
    "sqlite_scanner": ("duckdb_extension_sqlite", "sqlite.duckdb_extension"),
    "postgres_scanner": ("duckdb_extension_postgres", "postgres.duckdb_extension"),
}


def _package_file(name: str) -> Path:
    module, filename = SCANNERS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EtlError(f"DuckDB extension package `{module}` is not installed; "
                       f"pip install {module.replace('_', '-')}=={duckdb.__version__}")
    path = Path(next(iter(spec.submodule_search_locations))) / "extensions" / f"v{duckdb.__version__}" / filename
    if not path.exists():
        raise EtlError(f"`{path}` missing: the `{module}` package does not match duckdb {duckdb.__version__}")
    return path


def load_scanner(con: duckdb.DuckDBPyConnection, name: str, extension_dir: Path) -> None:
    """Install (once, from the local package) and load one scanner; never reaches the internet."""
    loaded = con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = ?",
                         [name]).fetchone()
    if loaded and loaded[0]:
        return
    staging = Path(extension_dir) / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    target = staging / f"{name}.duckdb_extension"
    source = _package_file(name)
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    # INSTALL takes no bound parameter; the path is ours (extension_dir), not user input.
    con.execute(f"INSTALL '{str(target).replace(chr(39), chr(39) * 2)}'")
    con.execute(f"LOAD {name}")

"""One-file artifacts: a NumPy .npz archive holding a JSON document and named arrays (no pickles)."""

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._exceptions import ArtifactError


def write_artifact(path: str | Path, document: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]]) -> None:
    """``arrays`` groups arrays by section (e.g. "features", "state"); stored as "section.name"."""
    payload = {"meta": np.array(json.dumps(document))}
    for section, named in arrays.items():
        payload |= {f"{section}.{k}": v for k, v in named.items()}
    with Path(path).open("wb") as handle:
        # numpy < 2.1 has no allow_pickle here; its stubs match **payload against that keyword
        np.savez_compressed(handle, **payload)  # type: ignore[arg-type]


def read_artifact(path: str | Path, what: str) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """The document and the arrays by section; ArtifactError naming ``what`` was expected."""
    if not Path(path).is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        with np.load(Path(path), allow_pickle=False) as archive:
            stored = {k: archive[k] for k in archive.files}
        document = json.loads(str(stored.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        # NumPy's own message for a non-archive suggests unpickling it; never repeat that.
        raise ArtifactError(f"{path}: not a {what} artifact (expected the .npz file bestroute writes)") from exc
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for key, value in stored.items():
        section, _, name = key.partition(".")
        arrays.setdefault(section, {})[name] = value
    return document, arrays

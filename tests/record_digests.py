"""sha256 digests of a built tfds dataset's DECODED records, per split and feature.

The ``.array_record`` container bytes may differ between two builds of the same records, so
reproducibility is checked on what a reader gets: every feature of every record, decoded
(PNG images to uint8 arrays), in record order. Each feature's digest covers, for every
record, the feature name, dtype, shape and raw bytes of the decoded value. The builder's
``metadata.json`` and ``features.json`` are digested too (canonical JSON).

Used by the tests of the built-in (rendered) datasets against the digests in
``builtin_record_digests.json`` (recorded from the builds of the tiny configs); rerun
``python tests/record_digests.py DIR...`` on fresh builds to print new digests when a change
to the rendered records is intended.

Rendered pixels and float labels come from XLA-CPU, whose results may differ in the last bits
on another CPU or jax version; the file records the environment (:func:`environment`) and
:func:`check_digests` compares only where it matches (elsewhere the test is skipped, saying
why). The determinism tests (two builds, same records) run everywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Dict

import numpy as np

DIGEST_FILE = os.path.join(os.path.dirname(__file__), "builtin_record_digests.json")


def _json_digest(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _update(h, name: str, value) -> None:
    arr = np.asarray(value)
    h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(np.ascontiguousarray(arr).tobytes())


def builder_digests(builder_dir: str) -> Dict[str, Dict[str, str]]:
    """{split: {feature: sha256 hex, '_records': count}, '_files': {metadata.json: sha,
    features.json: sha}} of the build in ``builder_dir``."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(builder_dir)
    out: Dict[str, Dict[str, str]] = {}
    for split in sorted(builder.info.splits):
        source = builder.as_data_source(split)
        hashes: Dict[str, "hashlib._Hash"] = {}
        for i in range(len(source)):
            record = source[i]
            for name in sorted(record):
                _update(hashes.setdefault(name, hashlib.sha256()), name, record[name])
        out[split] = {name: h.hexdigest() for name, h in sorted(hashes.items())}
        out[split]["_records"] = str(len(source))
    out["_files"] = {name: _json_digest(os.path.join(builder_dir, name))
                     for name in ("metadata.json", "features.json")}
    return out


def environment() -> Dict[str, str]:
    """What XLA-CPU's float results depend on: jax/jaxlib/numpy versions and the CPU model and flags."""
    import jax
    import jaxlib

    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__, "cpu": model,
            "cpu_flags_sha256": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()}


def check_digests(builder_dir: str, dataset: str) -> None:
    """Assert the build equals the recorded digests; pytest.skip where the recording environment differs."""
    import pytest

    with open(DIGEST_FILE) as f:
        recorded_env = json.load(f).get("_environment")
    here = environment()
    if recorded_env != here:
        pytest.skip(f"digests were recorded on {recorded_env}; this machine is {here}: XLA-CPU float results may "
                    f"differ in the last bits, so bytes are only compared on the recording environment")
    problems = diff_digests(builder_digests(builder_dir), expected_digests(dataset))
    assert problems == [], problems


def expected_digests(dataset: str) -> Dict[str, Dict[str, str]]:
    """The recorded digests of ``dataset``'s tiny build."""
    with open(DIGEST_FILE) as f:
        table = json.load(f)
    if dataset not in table:
        raise KeyError(f"{DIGEST_FILE} has no entry {dataset!r}; recorded: {sorted(table)}")
    return table[dataset]


def diff_digests(got: Dict, want: Dict) -> list:
    """Human-readable list of the (split, feature) entries that differ."""
    return [f"{split}/{key}: got {got.get(split, {}).get(key)} want {value}"
            for split, entries in want.items() for key, value in entries.items()
            if got.get(split, {}).get(key) != value] + \
           [f"{split}/{key}: not recorded" for split, entries in got.items() for key in entries
            if key not in want.get(split, {})]


if __name__ == "__main__":
    table = {os.path.basename(os.path.dirname(os.path.dirname(d.rstrip("/")))): builder_digests(d)
             for d in sys.argv[1:]}
    table["_environment"] = environment()
    print(json.dumps(table, indent=1, sort_keys=True))

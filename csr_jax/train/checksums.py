"""CRC-32 checksums of a train state and of the data-iterator state, recorded and verified.

A checkpoint's files can be damaged after they are written (a flipped bit on disk or in transit,
a truncated copy, a partial sync). Orbax reads such files without complaint when the damage is in
array data, and training would go on from corrupt weights. So the checkpoint carries, next to the
arrays, a checksum of every array computed from the values that were saved; a restore recomputes
them from the values that were read and refuses any difference.

CRC-32 (zlib) is a checksum against accidental damage, not a signature against tampering; it is
the fastest of the standard library's (about 0.7 GB/s on one core of a 2-core EPYC VM against
0.4 for SHA-256; see benchmarks/RESULTS.md for the save/restore overhead).

Arrays every process can read whole (replicated or single-process: this project's layout) are
summed whole. An array sharded across processes is summed shard by shard: each process sums the
shards it holds, the sums of all processes are gathered into the record, and on restore each
process verifies the shards it read.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import jax
import numpy as np

ALGORITHM = "crc32"


class ChecksumMismatch(ValueError):
    """The values read differ from the values that were saved."""


def _crc(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    return f"{zlib.crc32(memoryview(data).cast('B')) & 0xFFFFFFFF:08x}"


def _whole(leaf: Any) -> np.ndarray | None:
    """The whole value of `leaf` on this host, or None when it is sharded across processes."""
    if not isinstance(leaf, jax.Array):
        return np.asarray(leaf)
    if leaf.is_fully_addressable:
        return np.asarray(jax.device_get(leaf))
    if leaf.is_fully_replicated:
        return np.asarray(leaf.addressable_data(0))
    return None


def _index_key(index: tuple[slice, ...]) -> str:
    return ",".join(f"{s.start or 0}:{s.stop if s.stop is not None else ''}" for s in index)


def _shard_sums(leaf: jax.Array) -> dict[str, str]:
    """{shard index: crc} of the shards this process holds."""
    return {_index_key(s.index): _crc(np.asarray(s.data)) for s in leaf.addressable_shards}


def _leaf_sums(tree: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        whole = _whole(leaf)
        entry: dict[str, Any] = {"shape": list(np.shape(leaf)), "dtype": str(leaf.dtype)}
        if whole is not None:
            entry["crc32"] = _crc(whole)
        else:
            entry["shards"] = _shard_sums(leaf)
        out[jax.tree_util.keystr(path)] = entry
    return out


def _gather_shards(sums: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merges every process's shard sums into one record (collective, multi-process only)."""
    if jax.process_count() == 1 or not any("shards" in e for e in sums.values()):
        return sums
    from csr_jax.train.checkpoint import _gather_json_states  # pylint: disable=g-import-not-at-top

    local = {k: e["shards"] for k, e in sums.items() if "shards" in e}
    for other in _gather_json_states(local):
        for key, shards in other.items():
            sums[key]["shards"].update(shards)
    return sums


def json_sum(value: Any) -> str:
    """Checksum of a JSON value (key order does not matter)."""
    return f"{zlib.crc32(json.dumps(value, sort_keys=True).encode()) & 0xFFFFFFFF:08x}"


def record(state: Any, data_states: Any) -> dict[str, Any]:
    """The 'checksums' item of a checkpoint (collective when arrays span processes)."""
    return {
        "algorithm": ALGORITHM,
        "arrays": _gather_shards(_leaf_sums(state)),
        "data": json_sum(data_states),
    }


def verify(state: Any, data_states: Any, saved: dict[str, Any]) -> int:
    """Raises ChecksumMismatch naming the first array (or the data state) that differs.

    Returns the number of arrays verified. Every array of `state` must be in the record.
    """
    if saved.get("algorithm") != ALGORITHM:
        raise ChecksumMismatch(f"unknown checksum algorithm {saved.get('algorithm')!r}")
    if json_sum(data_states) != saved.get("data"):
        raise ChecksumMismatch("the data-iterator state differs from the one saved")
    arrays = saved.get("arrays") or {}
    count = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        key = jax.tree_util.keystr(path)
        entry = arrays.get(key)
        if entry is None:
            raise ChecksumMismatch(f"no checksum recorded for {key}")
        if list(np.shape(leaf)) != entry["shape"] or str(leaf.dtype) != entry["dtype"]:
            raise ChecksumMismatch(
                f"{key} has shape {list(np.shape(leaf))} {leaf.dtype}, saved "
                f"{entry['shape']} {entry['dtype']}"
            )
        whole = _whole(leaf) if "crc32" in entry else None
        if whole is not None:
            if _crc(whole) != entry["crc32"]:
                raise ChecksumMismatch(f"the values of {key} differ from those saved (CRC-32)")
        else:
            saved_shards = entry.get("shards") or {}  # Empty if the layout changed: not comparable.
            for index, crc in _shard_sums(leaf).items():
                if index in saved_shards and saved_shards[index] != crc:
                    raise ChecksumMismatch(
                        f"the values of shard [{index}] of {key} differ from those saved"
                    )
        count += 1
    return count

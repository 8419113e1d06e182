#!/usr/bin/env python3
"""Run one fuzz harness of `targets.py` under atheris (libFuzzer, coverage-guided).

Usage: `python scripts/fuzz/fuzz.py TARGET [libFuzzer options] [CORPUS_DIR ...]`, e.g.
`python scripts/fuzz/fuzz.py json -max_total_time=60 /tmp/corpus/json`. Targets: json, cbor,
pdu, ingest, xmatrix, txt, key_document, negotiation, policy, client_body. Any exception
escaping the harness is a crash: libFuzzer prints it and writes the input to
`<artifact_prefix>crash-<sha1>`. `--print-seeds DIR` writes the target's seed inputs into DIR
instead (`run_all.py` does this before the first run). Needs `pip install atheris` (the
`fuzz` extra); the harnesses themselves do not.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import targets


def write_seeds(name: str, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    found = targets.seeds(name)
    for seed in found:
        (folder / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}").write_bytes(seed)
    return len(found)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: fuzz.py TARGET [options]; targets: {', '.join(targets.TARGETS)}")
    name = sys.argv[1]
    if len(sys.argv) == 4 and sys.argv[2] == "--print-seeds":
        print(write_seeds(name, Path(sys.argv[3])))
        return
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    # Coverage of everything imported so far: the decoders and what they call.
    atheris.instrument_all()
    harness = targets.TARGETS[name]
    targets.room("11")  # built before fuzzing starts, not on the first input
    atheris.Setup([sys.argv[0], *sys.argv[2:]], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

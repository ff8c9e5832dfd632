"""`shoal bench registry`: how fast the registry hashes, verifies and imports.

- manifest build throughput: every file of the default model's version re-hashed and every
  tensor's Merkle tree rebuilt from a copy of a verified checkout (MB/s);
- span verification: fetching and verifying the files of a 10-layer span into an empty directory,
  then re-verifying it offline (seconds, bytes read against the model's size);
- import: `shoal model import --default` in a child process into an empty registry (wall time and
  the child's peak RSS).

Writes `registry.json` in the output directory.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_registry_bench(shoal_cfg, model: str, out_dir: Path, span: int = 10,
                       import_default: bool = True) -> dict:
    from registry.manifest import build_manifest

    client = shoal_cfg.client()
    version_id = client.resolve(model)
    manifest = client.manifest(version_id)
    total = sum(f.size for f in manifest.files.values())
    report: dict = {"version": version_id, "model_bytes": total}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        client.checkout(version_id, tmp / "full")
        report["checkout_s"] = time.perf_counter() - t0
        copy = tmp / "copy"
        copy.mkdir()
        for f in manifest.files:
            if not f.endswith(".merkle"):
                shutil.copyfile(tmp / "full" / f, copy / f)
        hashed = sum((copy / f).stat().st_size for f in os.listdir(copy))
        t0 = time.perf_counter()
        rebuilt = build_manifest(copy, name=manifest.name, architecture=manifest.architecture,
                                 model_type=manifest.model_type, num_layers=manifest.num_layers,
                                 dtype=manifest.dtype, lineage=manifest.lineage)
        elapsed = time.perf_counter() - t0
        assert rebuilt.version_id == version_id, "rebuilt manifest differs from the release"
        report["manifest_build_s"] = elapsed
        report["manifest_build_mb_s"] = hashed / elapsed / 1e6
        start = max(0, manifest.num_layers // 2 - span // 2)
        t0 = time.perf_counter()
        client.open_span(version_id, start, start + span, tmp / "span")
        fetch = time.perf_counter() - t0
        read = client.bytes_read
        t0 = time.perf_counter()
        client.verify_dir(tmp / "span", partial=True)
        report["span"] = {"layers": f"{start}:{start + span}", "fetch_and_verify_s": fetch,
                          "offline_reverify_s": time.perf_counter() - t0, "bytes_read": read,
                          "fraction_of_model": read / total}
    if import_default:
        with tempfile.TemporaryDirectory() as home:
            env = {**os.environ, "SHOAL_HOME": home}
            env.pop("SHOAL_REGISTRY", None)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "flows.cli", "model", "import", "--default"],
                           env=env, check=True, capture_output=True)
            report["import_default"] = {
                "wall_s": time.perf_counter() - t0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "registry.json").write_text(json.dumps(report, indent=2))
    return report

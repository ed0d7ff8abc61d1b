"""Benchmark: streaming selection of a large catalogue shard versus a naive whole-file pandas load.

Builds a catalogue shard of N rows (default 2 x 10^7) by tiling a simulated mock-sky shard
with fresh object_ids, then measures, each in a fresh process so peak RSS is its own:

* ``streaming``  the pipeline's select_shard (record batches of select.batch_rows)
* ``naive``      pd.read_parquet of the whole shard, then the same cuts in one go

Printed side by side in one run: rows/s, peak RSS, and the ratios. The naive run is done
on a smaller shard (default 2 x 10^6 rows) because at 2 x 10^7 it would need > 10 GB.

    python -m benchmarks.select_streaming [--rows 20000000] [--naive-rows 2000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._harness import child_main, peak_rss_mb, print_ratio, print_table, run_child

OUT = Path(__file__).resolve().parent / "out"


def seed_table() -> pa.Table:
    """One simulated 0.5 deg^2 mock shard in the catalogue contract."""
    from workflow_scripts.catalog import write_mock_shard
    from workflow_scripts.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yaml")
    path = OUT / "seed_shard.parquet"
    if not path.exists():
        name, spec = next(iter(cfg["shards"].items()))
        write_mock_shard(name, spec, cfg["seed"], cfg["sky"], path, OUT / "seed_truth.parquet")
    return pq.read_table(path)


def build_shard(rows: int, path: Path) -> None:
    """Tile the seed shard to *rows* rows with unique object_ids, written row group by row group."""
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return
    seed = seed_table()
    tmp = path.with_suffix(".part")
    written = 0
    with pq.ParquetWriter(tmp, seed.schema, compression="zstd") as writer:
        while written < rows:
            chunk = seed.slice(0, min(len(seed), rows - written))
            ids = pa.array(np.arange(written, written + len(chunk), dtype=np.int64) + 10**15)
            writer.write_table(chunk.set_column(chunk.schema.get_field_index("object_id"), "object_id", ids))
            written += len(chunk)
    tmp.rename(path)


def measure(mode: str, path: str | Path) -> dict:
    """Run one selection in this process; return rows/s and peak RSS."""
    from workflow_scripts.config import load_config
    from workflow_scripts.select import CutFlow, select_batch, select_shard

    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yaml")["select"]
    path = Path(path)
    rows = pq.ParquetFile(path).metadata.num_rows
    start = time.perf_counter()
    if mode == "streaming":
        report, _ = select_shard(path, cfg, OUT / f"cand_{mode}.parquet", shard="bench")
        selected = report["selected"]["any"]
    else:
        import pandas as pd

        df = pd.read_parquet(path)
        cand, _ = select_batch(df, cfg, CutFlow())
        selected = len(cand)
    seconds = time.perf_counter() - start
    return {"mode": mode, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mb": peak_rss_mb(),
            "selected": selected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--naive-rows", type=int, default=2_000_000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if child_main(args.child, measure):
        return 0

    OUT.mkdir(exist_ok=True)
    big, small = OUT / f"catalog_{args.rows}.parquet", OUT / f"catalog_{args.naive_rows}.parquet"
    t0 = time.perf_counter()
    build_shard(args.rows, big)
    build_shard(args.naive_rows, small)
    print(f"built benchmark shards in {time.perf_counter() - t0:.0f} s")
    module = "benchmarks.select_streaming"
    results = [run_child(module, "streaming", big), run_child(module, "streaming", small),
               run_child(module, "naive", small)]
    print_table([("mode", "mode", "<10"), ("rows", "rows", ">11,"), ("seconds", "seconds", ">8.1f"),
                 ("rows_per_s", "rows/s", ">11,.0f"), ("peak_rss_mb", "peak RSS MB", ">12,.0f"),
                 ("selected", "selected", ">9,")], results)
    stream_big, stream_small, naive_small = results
    print_ratio(f"peak RSS streaming {stream_big['rows']:,} rows / {stream_small['rows']:,} rows",
                stream_big["peak_rss_mb"], stream_small["peak_rss_mb"], ".2f", " (1 = independent of catalogue size)")
    print_ratio(f"peak RSS naive / streaming at {naive_small['rows']:,} rows",
                naive_small["peak_rss_mb"], stream_small["peak_rss_mb"], ".1f", "x")
    print_ratio(f"throughput streaming / naive at {naive_small['rows']:,} rows",
                stream_small["rows_per_s"], naive_small["rows_per_s"], ".2f", "x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

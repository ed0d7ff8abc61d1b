"""Stage ``embed``: the encoder's representation h of every object -> ``embeddings.parquet``.

Loads ``model.pt`` (written by ``workflow_scripts.ssl.train``), runs the encoder f (the
representation h, not the projection head) in eval mode on every object of every shard, in
shard and row order, with the normalisation the model was trained with and no augmentation
(bf16 autocast on CUDA). Writes, atomically and streaming (row groups of at most
``ROW_GROUP`` rows):

    object_id (int64), shard (string), h000 ... h{D-1} (float32, D = repr_dim)

    python -m workflow_scripts.embed --model results/runs/default/model.pt \\
        --images results/tensors/6arcsec/*.images.npy --out results/runs/default/embeddings.parquet
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from workflow_scripts.contracts import atomic_path
from workflow_scripts.ssl.data import ShardSet, mask_path_for, shard_name, to_device
from workflow_scripts.ssl.model import SimCLRModel, build_model
from workflow_scripts.ssl.normalize import Normalizer
from workflow_scripts.ssl.train import pick_device, use_bf16

ROW_GROUP = 65536


def log(msg: str) -> None:
    print(f"[embed] {msg}", file=sys.stderr, flush=True)


def load_model(path: str | Path, device: torch.device) -> tuple[SimCLRModel, Normalizer, dict[str, Any]]:
    """(model in eval mode on *device*, its normalizer, the model.pt payload)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_state", "encoder", "in_channels", "normalisation", "meta"):
        if key not in payload:
            raise ValueError(f"{path}: not a model.pt of workflow_scripts.ssl.train (no {key!r})")
    model = build_model(int(payload["in_channels"]), payload["encoder"])
    model.load_state_dict(payload["model_state"])
    model = model.to(device, memory_format=torch.channels_last).eval()  # faster on CPU (oneDNN) and GPU
    norm = payload["normalisation"]
    normalizer = Normalizer.from_meta(payload["meta"], norm["method"], **norm.get("params", {})).to(device)
    return model, normalizer, payload


def object_ids(images_path: str | Path, n_rows: int) -> np.ndarray:
    """object_id of each row of a shard, from the index parquet beside the images."""
    index_path = Path(images_path).with_name(shard_name(images_path) + ".index.parquet")
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path}: index parquet not found beside {images_path}")
    index = pd.read_parquet(index_path, columns=["row", "object_id"]).sort_values("row")
    if len(index) != n_rows or not np.array_equal(index["row"].to_numpy(), np.arange(n_rows)):
        raise ValueError(f"{index_path}: rows do not match the {n_rows} rows of {images_path}")
    return index["object_id"].to_numpy(dtype=np.int64)


@torch.no_grad()
def embed(model_path: str | Path, images: list[str | Path], out: str | Path, batch_size: int = 512,
          device: str | None = None) -> int:
    """Write embeddings.parquet for all objects of *images*; return the number of rows."""
    dev = pick_device(device)
    model, normalizer, payload = load_model(model_path, dev)
    shards = ShardSet([(p, mask_path_for(p)) for p in images])
    if shards.in_channels != int(payload["in_channels"]):
        raise ValueError(f"tensors have {shards.in_channels} channels, the model was trained on "
                         f"{payload['in_channels']}")
    ids = [object_ids(p, int(n)) for p, n in zip(images, shards.sizes)]
    names = [shard_name(p) for p in images]
    repr_dim = int(model.encoder.repr_dim)
    columns = [f"h{k:03d}" for k in range(repr_dim)]
    schema = pa.schema([("object_id", pa.int64()), ("shard", pa.string())]
                       + [(c, pa.float32()) for c in columns])
    cuda = dev.type == "cuda"
    memory_format = torch.channels_last
    bf16 = use_bf16(payload.get("settings", {}).get("precision", "auto"), dev)  # as in training
    t0, n_done = time.perf_counter(), 0
    buffer: list[tuple[int, int, np.ndarray]] = []

    def flush(writer: pq.ParquetWriter) -> None:
        if not buffer:
            return
        h = np.concatenate([b[2] for b in buffer])
        oid = np.concatenate([ids[s][start: start + len(b)] for s, start, b in buffer])
        shard = pa.array(np.concatenate([[names[s]] * len(b) for s, _, b in buffer]), pa.string())
        arrays = [pa.array(oid, pa.int64()), shard] + [pa.array(h[:, k]) for k in range(repr_dim)]
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        buffer.clear()

    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for s, start, img, mask in shards.iter_sequential(batch_size):
                batch = to_device(img, mask, dev, pin=cuda)
                x = normalizer(batch.images, batch.mask).contiguous(memory_format=memory_format)
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
                    h = model.represent(x)
                buffer.append((s, start, h.float().cpu().numpy()))
                n_done += len(img)
                if sum(len(b[2]) for b in buffer) >= ROW_GROUP:
                    flush(writer)
            flush(writer)
            if n_done == 0:
                writer.write_table(schema.empty_table())
    dt = time.perf_counter() - t0
    log(f"{n_done} objects x {repr_dim} dims from {len(images)} shard(s) on {dev} in {dt:.1f} s "
        f"({n_done / max(dt, 1e-9):.0f} objects/s) -> {out}")
    return n_done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.embed", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="results/runs/<run>/model.pt")
    parser.add_argument("--images", nargs="+", required=True,
                        help="<shard>.images.npy files (mask and index parquet beside them)")
    parser.add_argument("--out", required=True, help="results/runs/<run>/embeddings.parquet")
    parser.add_argument("--batch-size", type=int, default=512, help="objects per batch (default 512)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not Path(args.model).exists():
        parser.error(f"--model {args.model} does not exist")
    for img in args.images:
        try:
            mask = mask_path_for(img)
        except ValueError as exc:
            parser.error(f"--images: {exc}")
        for p in (Path(img), mask, Path(img).with_name(shard_name(img) + ".index.parquet")):
            if not p.exists():
                parser.error(f"--images: {p} does not exist")
    embed(args.model, args.images, args.out, batch_size=args.batch_size, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())

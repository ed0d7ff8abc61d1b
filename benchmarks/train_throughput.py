"""Benchmark: the training loop (batched memmap gathers + on-device batch augmentation) versus a
naive per-sample pipeline, and the embedding throughput.

Measured side by side in one run, on the same tensors, model, loss and optimizer:

* ``batched``  ``ssl.data.EpochLoader`` (sorted fancy-index gathers per shard, background
               prefetch) -> ``ssl.train.Trainer.train_step`` (two views of the whole batch in one
               ``Augmenter`` call, ``Normalizer`` on the batch, one forward of 2N views)
* ``naive``    a ``torch.utils.data.Dataset`` whose ``__getitem__`` reads ONE object from the
               memmap and augments (reddening, blur, sub-pixel shift, noise, flip / rotation with
               scipy.ndimage / numpy) and normalises (asinh) it twice in Python, a ``DataLoader``
               (shuffle, default collate, num_workers=0), then the same forward / loss / step
* ``embed``    ``workflow_scripts.embed.embed`` over all objects (eval, no augmentation)

Throughput is objects per second (each training object gives 2 views), after one warm-up step,
for the default encoder (config.yaml) and a small one (width 8, where the data path matters
most). Uses results/tensors/6arcsec/ if present, else synthetic tensors.

    python -m benchmarks.train_throughput [--steps 4] [--batch-size 128] [--synthetic 512]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from workflow_scripts.config import load_config, resolve_runs
from workflow_scripts.embed import embed
from workflow_scripts.ssl.augment import EXTINCTION_R
from workflow_scripts.ssl.data import EpochLoader, ShardSet, epoch_permutation, mask_path_for
from workflow_scripts.ssl.normalize import band_noise
from workflow_scripts.ssl.train import Trainer, model_payload, pick_device

ROOT = Path(__file__).resolve().parents[1]
TENSORS = ROOT / "results" / "tensors" / "6arcsec"
OUT = Path(__file__).resolve().parent / "out" / "train_throughput"


def synthetic_tensors(n: int) -> tuple[list[Path], dict]:
    """Two shards of noise + point sources (written once under benchmarks/out/)."""
    import pandas as pd

    OUT.mkdir(parents=True, exist_ok=True)
    bands = ["g", "r", "i", "z", "y", "J", "Ks"]
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[:35, :35] - 17
    for s in range(2):
        name = OUT / f"syn{n}_{s}"
        paths.append(Path(f"{name}.images.npy"))
        if paths[-1].exists():
            continue
        m = n // 2
        img = rng.normal(0, 5, (m, 7, 35, 35)).astype(np.float32)
        img += (rng.uniform(10, 200, (m, 7, 1, 1)) * np.exp(-(xx**2 + yy**2) / 4.5)).astype(np.float32)
        mask = rng.random(img.shape) < 0.01
        img[mask] = 0
        np.save(f"{name}.mask.npy", mask)
        pd.DataFrame({"row": np.arange(m), "object_id": np.arange(m) + s * m}).to_parquet(f"{name}.index.parquet")
        np.save(paths[-1], img)
    meta = {"bands": bands, "size_px": 35, "stats": {b: {"median": 0.0, "sigma_mad": 5.0} for b in bands}}
    return paths, meta


class NaiveDataset(torch.utils.data.Dataset):
    """One object at a time: read, augment twice and normalise in numpy / scipy."""

    def __init__(self, shards: ShardSet, meta: dict, aug: dict, softening: float = 1.0):
        self.shards, self.aug = shards, aug
        self.noise = np.array(band_noise(meta), dtype=np.float32)
        self.ext = np.array([EXTINCTION_R.get(b, 0.0) for b in meta["bands"]], dtype=np.float32)
        self.soft = softening * self.noise
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.shards)

    def _view(self, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
        a, rng = self.aug, self.rng
        x = np.where(mask, 0.0, img).astype(np.float32)
        if a.get("reddening_sigma", 0) > 0:
            x = x * (10 ** (-0.4 * rng.normal(0, a["reddening_sigma"]) * self.ext))[:, None, None]
        m = mask.astype(np.float32)
        if a.get("psf_blur_max_px", 0) > 0:
            sigma = rng.uniform(0, a["psf_blur_max_px"])
            x = np.stack([ndimage.gaussian_filter(c, sigma) for c in x])
            m = np.stack([ndimage.gaussian_filter(c, sigma) for c in m])
        if a.get("shift_px", 0) > 0:
            r, phi = a["shift_px"] * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
            x = np.stack([ndimage.shift(c, (r * math.sin(phi), r * math.cos(phi)), order=1) for c in x])
            m = np.stack([ndimage.shift(c, (r * math.sin(phi), r * math.cos(phi)), order=1, cval=1.0) for c in m])
        if a.get("noise_scale", 0) > 0:
            x = x + rng.normal(0, 1, x.shape).astype(np.float32) * (a["noise_scale"] * self.noise)[:, None, None]
        if a.get("flips_rotations", False):
            k = rng.integers(8)
            x, m = np.rot90(x, k % 4, axes=(1, 2)), np.rot90(m, k % 4, axes=(1, 2))
            if k >= 4:
                x, m = x[:, :, ::-1], m[:, :, ::-1]
        bad = m >= 0.5
        y = np.arcsinh(x / self.soft[:, None, None])
        return np.where(bad, 0.0, y).astype(np.float32)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.shards.gather(np.array([i]))
        return torch.from_numpy(self._view(img[0], mask[0])), torch.from_numpy(self._view(img[0], mask[0]))


def _batches(shards: ShardSet, batch_size: int, device: torch.device):
    """The loop's batches, epoch after epoch (so a small data set still gives full batches)."""
    epoch = 0
    while True:
        yield from EpochLoader(shards, epoch_permutation(len(shards), 0, epoch), batch_size, device)
        epoch += 1


def _naive_batches(loader: torch.utils.data.DataLoader):
    while True:
        yield from loader


def run_batched(trainer: Trainer, shards: ShardSet, batch_size: int, steps: int) -> float:
    loader = _batches(shards, batch_size, trainer.device)
    trainer.train_step(next(loader), 1e-4)  # warm-up
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(loader)
        trainer.train_step(batch, 1e-4)
        n += batch.images.shape[0]
    if trainer.cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def run_naive(trainer: Trainer, shards: ShardSet, meta: dict, settings: dict, batch_size: int, steps: int) -> float:
    ds = NaiveDataset(shards, meta, settings["augment"], float(settings["normalisation_params"].get("softening", 1.0)))
    loader = _naive_batches(torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                                        num_workers=0))

    def step(v1: torch.Tensor, v2: torch.Tensor) -> None:
        trainer.step_on_views(torch.cat([v1, v2]).to(trainer.device).contiguous(memory_format=trainer.memory_format))

    step(*next(loader))  # warm-up
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        v1, v2 = next(loader)
        step(v1, v2)
        n += v1.shape[0]
    if trainer.cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--synthetic", type=int, default=0, help="use N synthetic objects instead of results/")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    if args.synthetic or not (TENSORS / "meta.json").exists():
        images, meta = synthetic_tensors(args.synthetic or 512)
        source = f"synthetic ({args.synthetic or 512} objects)"
    else:
        images = sorted(TENSORS.glob("*.images.npy"))
        meta = json.loads((TENSORS / "meta.json").read_text())
        source = f"{TENSORS.relative_to(ROOT)} ({meta.get('n_objects', '?')} objects)"
    shards = ShardSet([(p, mask_path_for(p)) for p in images])
    device = pick_device(args.device)
    base = resolve_runs(load_config(ROOT / "config.yaml"))["default"]
    batch = min(args.batch_size, len(shards))
    rows = []
    for label, enc in [("default encoder", base["encoder"]), ("small encoder (width 8)", {**base["encoder"], "width": 8})]:
        settings = {**base, "encoder": enc, "deterministic": False}
        torch.manual_seed(0)
        fast = run_batched(Trainer(settings, shards.in_channels, meta, device), shards, batch, args.steps)
        # the naive baseline as usually written: per-sample Dataset, float32 model in the default memory layout
        slow = run_naive(Trainer({**settings, "precision": "fp32"}, shards.in_channels, meta, device,
                                 memory_format=torch.contiguous_format), shards, meta, settings, batch, args.steps)
        # the same per-sample data path with our model layout: isolates what the batched data path buys
        slow_cl = run_naive(Trainer(settings, shards.in_channels, meta, device), shards, meta, settings, batch,
                            args.steps)
        trainer = Trainer(settings, shards.in_channels, meta, device)
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / "model.pt"
            torch.save(model_payload(trainer.model, settings, meta, shards.in_channels, {}), model_path)
            embed(model_path, images, Path(tmp) / "emb.parquet", batch_size=512, device=str(device))  # warm-up
            t0 = time.perf_counter()
            n = embed(model_path, images, Path(tmp) / "emb.parquet", batch_size=512, device=str(device))
            emb = n / (time.perf_counter() - t0)
        rows.append((label, fast, slow, slow_cl, emb))
        rows_bf16 = Trainer(settings, shards.in_channels, meta, device).bf16

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}), "
          f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"data: {source}; batch {batch} objects (2 x {batch} views), {args.steps} timed steps; "
          f"augment {json.dumps(base['augment'])}")
    print()
    header = ("model", "batched loop (obj/s)", "naive Dataset (obj/s)", "ratio", "naive, our model settings", "ratio",
              "embed (obj/s)")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in header) + "|")
    for label, fast, slow, slow_cl, emb in rows:
        print(f"| {label} | {fast:.1f} | {slow:.1f} | {fast / slow:.2f}x | {slow_cl:.1f} | {fast / slow_cl:.2f}x | "
              f"{emb:.1f} |")
    print(f"model settings of the batched loop: channels_last, bf16 autocast {'on' if rows_bf16 else 'off'} "
          "(precision auto)")
    print("ratio 1 = batched loop / naive as usually written (per-sample Dataset + DataLoader, float32, default "
          "memory layout); ratio 2 = the same naive data path with our model settings: what batching the data "
          "path alone buys")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Batched loading of stacked tensors straight from the per-shard memmaps.

The shards of one scale (``{shard}.images.npy`` float32 N x C x H x W raw nJy, ``{shard}.mask.npy``
bool, True = bad) are opened as memmaps and seen as one concatenated index space. A training
batch is a set of global indices: sorted, split per shard, gathered with one fancy index per
shard and concatenated; nothing is done per sample in Python, and memory does not grow with the
number of objects (the only O(N) array is the epoch's permutation of int64 indices).

Shuffling is a permutation drawn from ``numpy.random.default_rng([seed, epoch])``: a pure
function of the seed and the epoch, so a resumed run can rebuild it (the trainer also stores it
in its checkpoint). Batches are gathered by an optional background thread (numpy and the
memmap page faults overlap with the device's work), pinned on CUDA and copied with
``non_blocking=True``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def mask_path_for(images_path: str | Path) -> Path:
    """The mask file beside an images file (``X.images.npy`` -> ``X.mask.npy``)."""
    p = Path(images_path)
    if not p.name.endswith(".images.npy"):
        raise ValueError(f"{p}: expected a file named <shard>.images.npy")
    return p.with_name(p.name[: -len(".images.npy")] + ".mask.npy")


def shard_name(images_path: str | Path) -> str:
    """The shard name: the file name before ``.images.npy``."""
    name = Path(images_path).name
    if not name.endswith(".images.npy"):
        raise ValueError(f"{images_path}: expected a file named <shard>.images.npy")
    return name[: -len(".images.npy")]


class ShardSet:
    """The memmapped shards of one scale as one index space (global index = shard offset + row)."""

    def __init__(self, tensor_paths: list[tuple[str | Path, str | Path]]):
        if not tensor_paths:
            raise ValueError("no tensor shards given")
        self.paths = [(Path(i), Path(m)) for i, m in tensor_paths]
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        for img_path, mask_path in self.paths:
            for p in (img_path, mask_path):
                if not p.exists():
                    raise FileNotFoundError(f"{p}: tensor file not found")
            img = np.load(img_path, mmap_mode="r")
            mask = np.load(mask_path, mmap_mode="r")
            if img.ndim != 4 or img.dtype != np.float32:
                raise ValueError(f"{img_path}: expected float32 N x C x H x W, got {img.dtype} {img.shape}")
            if mask.shape != img.shape or mask.dtype != np.bool_:
                raise ValueError(f"{mask_path}: expected bool {img.shape}, got {mask.dtype} {mask.shape}")
            if self.images and img.shape[1:] != self.images[0].shape[1:]:
                raise ValueError(f"{img_path}: shape {img.shape[1:]} differs from {self.images[0].shape[1:]}")
            self.images.append(img)
            self.masks.append(mask)
        self.sizes = np.array([len(a) for a in self.images], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.sample_shape: tuple[int, int, int] = tuple(self.images[0].shape[1:])  # type: ignore[assignment]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def in_channels(self) -> int:
        return self.sample_shape[0]

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images and masks of the global *indices*, in sorted index order (one gather per shard)."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        if len(idx) and (idx[0] < 0 or idx[-1] >= len(self)):
            raise IndexError(f"index out of range 0..{len(self) - 1}")
        bounds = np.searchsorted(idx, self.offsets)
        images, masks = [], []
        for s in range(len(self.images)):
            local = idx[bounds[s]: bounds[s + 1]] - self.offsets[s]
            if len(local):
                images.append(self.images[s][local])
                masks.append(self.masks[s][local])
        return np.concatenate(images), np.concatenate(masks)

    def iter_sequential(self, batch_size: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """(shard number, first row, images, masks) in shard and row order: contiguous slices."""
        for s, (img, mask) in enumerate(zip(self.images, self.masks)):
            for start in range(0, len(img), batch_size):
                yield s, start, np.array(img[start: start + batch_size]), np.array(mask[start: start + batch_size])


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch *epoch* (a pure function of seed and epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch of an epoch; a last partial batch is kept if it has >= 2 objects
    (contrastive losses need negatives), so no object is left out of every epoch."""
    b = min(batch_size, n)
    bounds = [(s, min(s + b, n)) for s in range(0, n, b)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        bounds.pop()
    return bounds


@dataclass
class Batch:
    images: torch.Tensor  # float32 B x C x H x W, raw nJy, on the device
    mask: torch.Tensor  # bool, same shape, True = bad


def to_device(images: np.ndarray, mask: np.ndarray, device: torch.device, pin: bool) -> Batch:
    """Host arrays -> device tensors (pinned + non_blocking on CUDA)."""
    img_t, mask_t = torch.from_numpy(images), torch.from_numpy(mask)
    if pin:
        img_t, mask_t = img_t.pin_memory(), mask_t.pin_memory()
    return Batch(img_t.to(device, non_blocking=pin), mask_t.to(device, non_blocking=pin))


class EpochLoader:
    """The batches of one epoch, from batch number *start_batch* on, gathered ahead by a thread.

    ``permutation`` fixes the order; batch k holds ``permutation[start:stop]`` of
    ``batch_bounds(len(permutation), batch_size)[k]``. Use as an iterator; ``close()`` (or the
    end of iteration) stops the thread.
    """

    def __init__(self, shards: ShardSet, permutation: np.ndarray, batch_size: int, device: torch.device,
                 start_batch: int = 0, prefetch: int = 2):
        self.shards, self.permutation, self.device = shards, permutation, device
        self.bounds = batch_bounds(len(permutation), batch_size)[start_batch:]
        self.pin = device.type == "cuda"
        self.prefetch = prefetch
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self.bounds)

    def _host_batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, stop = self.bounds[k]
        images, mask = self.shards.gather(self.permutation[start:stop])
        img_t, mask_t = torch.from_numpy(images), torch.from_numpy(mask)
        if self.pin:
            img_t, mask_t = img_t.pin_memory(), mask_t.pin_memory()
        return img_t, mask_t

    def _worker(self) -> None:
        assert self._queue is not None
        try:
            for k in range(len(self.bounds)):
                item = self._host_batch(k)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # hand the error to the consumer
            self._queue.put(exc)

    def __iter__(self) -> Iterator[Batch]:
        if self.prefetch <= 0:
            for k in range(len(self.bounds)):
                img_t, mask_t = self._host_batch(k)
                yield Batch(img_t.to(self.device, non_blocking=self.pin), mask_t.to(self.device, non_blocking=self.pin))
            return
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._worker, name="batch-prefetch", daemon=True)
        self._thread.start()
        try:
            for _ in range(len(self.bounds)):
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                img_t, mask_t = item
                yield Batch(img_t.to(self.device, non_blocking=self.pin), mask_t.to(self.device, non_blocking=self.pin))
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

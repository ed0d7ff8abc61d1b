"""SimCLR training loop (stage ``train``): memmapped tensors -> ``results/runs/{run}/model.pt``.

Per step (Chen et al. 2020): a batch of N objects is gathered from the shards
(``ssl.data``), copied to the device, augmented twice in raw nJy (``ssl.augment``; one seeded
generator on the device), both views normalised together (``ssl.normalize``), passed through
f and g in ONE forward pass of 2N views (global batch statistics), and the configured loss
(``ssl.loss``) is minimised with AdamW (or LARS) under a per-step schedule: linear warm-up
to ``lr`` over ``warmup_epochs``, then cosine decay to 0.

channels_last on every device; on CUDA also bf16 autocast, pinned non-blocking copies; cudnn.benchmark only
when not ``deterministic``. On CPU: plain float32. Same code.

Files in ``out_dir``:
  history.csv     one row per epoch: epoch, step, loss, lr, images_per_s, alignment, uniformity
                  (images_per_s = objects per second of training, each object giving 2 views;
                  alignment / uniformity of Wang & Isola 2020 on the projections z of a fixed
                  evaluation batch of views, in eval mode)
  checkpoint.pt   every ``checkpoint_every_steps`` steps and on SIGTERM / SIGUSR1 / SIGURG
                  (written atomically; removed when training completes)
  model.pt        at the end (atomically): model state, encoder config, in_channels, bands,
                  normalisation, the meta.json used, the run settings, final metrics

Signals: SIGTERM, SIGUSR1 and SIGURG set a flag; the loop writes checkpoint.pt at the next step
boundary and the CLI exits with ``EXIT_REQUEUE`` (75, EX_TEMPFAIL) so that the scheduler retries.
A restart with the same settings and data resumes from checkpoint.pt; with ``deterministic``
it ends bit-for-bit like an uninterrupted run (the checkpoint holds model, optimizer, step,
epoch, position in the epoch, the epoch's permutation and every RNG state).

    python -m workflow_scripts.ssl.train --settings '{"epochs": 15, ...}' \\
        --meta results/tensors/6arcsec/meta.json --images results/tensors/6arcsec/*.images.npy \\
        --out-dir results/runs/default
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from workflow_scripts.contracts import atomic_path
from workflow_scripts.ssl.augment import AugmentConfig, Augmenter
from workflow_scripts.ssl.data import Batch, EpochLoader, ShardSet, batch_bounds, epoch_permutation, mask_path_for
from workflow_scripts.ssl.loss import alignment, make_loss, uniformity
from workflow_scripts.ssl.model import build_model, count_parameters
from workflow_scripts.ssl.normalize import Normalizer

EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpoint written after a signal; run the same command again
CHECKPOINT, MODEL, HISTORY = "checkpoint.pt", "model.pt", "history.csv"
HISTORY_COLUMNS = ("epoch", "step", "loss", "lr", "images_per_s", "alignment", "uniformity")
CHECKPOINT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)
EVAL_OBJECTS = 256
FORMAT_VERSION = 1


def log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary after a checkpoint signal; checkpoint.pt is written."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; resume from {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


# ----------------------------------------------------------------------------- optimisation

class LARS(torch.optim.Optimizer):
    """LARS (You, Gitman & Ginsburg 2017) as used by SimCLR: SGD with momentum whose update of
    each weight tensor is scaled by the trust ratio eta ||w|| / ||g + wd w||. Parameter groups
    with ``lars_exclude=True`` (biases, norm layers) get neither weight decay nor adaptation."""

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not g["lars_exclude"]:
                    d = d.add(p, alpha=g["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weights with weight decay; biases and norm-layer parameters (ndim <= 1) without, and
    excluded from LARS adaptation (Chen et al. 2020, appendix B.1)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
            {"params": plain, "weight_decay": 0.0, "lars_exclude": True}]


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "lars":
        return LARS(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; allowed: adamw, lars")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / decay_steps)))


# ----------------------------------------------------------------------------- set-up

def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 / AMX), where bf16 autocast is ~2x faster."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers; absent in some builds
        return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to run the model under bf16 autocast: "auto" = on CUDA and on CPUs with native bf16."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: expected auto, fp32 or bf16")
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return precision == "bf16"


@contextmanager
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels (and no cudnn autotuning) while training; restored afterwards."""
    if enabled and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]


class SignalFlag:
    """Records the first checkpoint signal received (handlers only set the flag)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    @contextmanager
    def installed(self) -> Iterator["SignalFlag"]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return
        previous = {s: signal.signal(s, self._handler) for s in CHECKPOINT_SIGNALS}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _fingerprint(settings: dict, shards: ShardSet) -> str:
    """What must match for a checkpoint to be resumed: settings and data layout."""
    data = {"settings": settings, "sizes": shards.sizes.tolist(), "shape": list(shards.sample_shape),
            "shards": [p[0].name for p in shards.paths]}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def write_history(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
        w.writeheader()
        w.writerows(rows)


class Progress:
    """A tqdm bar on a terminal; otherwise a log line at most every ``every_s`` seconds."""

    def __init__(self, total: int, initial: int, every_s: float = 30.0):
        self.total, self.every_s, self.last = total, every_s, time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, step: int, epoch: int, mean_loss: Callable[[], float], lr: float) -> None:
        """``mean_loss`` is called only when shown (it synchronises with the device)."""
        if self.bar is not None:
            self.bar.update(1)
            if time.monotonic() - self.last >= 1.0:
                self.last = time.monotonic()
                self.bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss():.4f}", lr=f"{lr:.2e}")
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            log(f"step {step}/{self.total} epoch {epoch + 1} loss {mean_loss():.4f} lr {lr:.3e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- the run

class Trainer:
    """Everything one run needs on its device; ``views`` and ``train_step`` are the hot path."""

    def __init__(self, settings: dict, in_channels: int, meta: dict, device: torch.device,
                 memory_format: torch.memory_format = torch.channels_last):
        self.settings, self.device = settings, device
        self.cuda = device.type == "cuda"
        # channels_last on CPU too: the oneDNN convolutions ran 1.5x faster on this machine's CPU
        self.memory_format = memory_format
        self.bf16 = use_bf16(settings.get("precision", "auto"), device)
        torch.manual_seed(int(settings["seed"]))  # model initialisation
        self.model = build_model(in_channels, settings["encoder"]).to(device, memory_format=self.memory_format)
        self.normalizer = Normalizer.from_meta(meta, settings["normalisation"],
                                               **settings.get("normalisation_params", {})).to(device)
        self.augmenter = Augmenter(AugmentConfig.from_dict(settings.get("augment", {})), meta)
        self.loss_fn = make_loss(settings["loss"], float(settings["temperature"]), float(settings["margin"]))
        self.optimizer = make_optimizer(settings["optimizer"], self.model, float(settings["lr"]),
                                        float(settings["weight_decay"]))
        self.generator = torch.Generator(device=device).manual_seed(int(settings["seed"]) + 1)

    def autocast(self) -> torch.autocast:
        # the losses and alignment/uniformity upcast to float32 internally
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def views(self, images: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        """Two augmented, normalised views of a batch, stacked: (2N, C, H, W) (view 1 first)."""
        # = torch.cat of Augmenter.two_views' pair, without splitting and re-joining the batch
        x, m = self.augmenter(torch.cat([images, images]), torch.cat([mask, mask]), generator)
        return self.normalizer(x, m).contiguous(memory_format=self.memory_format)

    def train_step(self, batch: Batch, lr: float) -> Tensor:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return self.step_on_views(self.views(batch.images, batch.mask, self.generator))

    def step_on_views(self, x: Tensor) -> Tensor:
        """One optimisation step on stacked views (2N, C, H, W): view 1 of each object, then view 2."""
        with self.autocast():
            _, z = self.model(x)
        z1, z2 = z.float().chunk(2)
        loss = self.loss_fn(z1, z2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, x_eval: Tensor) -> tuple[float, float]:
        """(alignment, uniformity) of z on the fixed evaluation views, in eval mode."""
        self.model.eval()
        with self.autocast():
            _, z = self.model(x_eval)
        self.model.train()
        z1, z2 = z.float().chunk(2)
        return float(alignment(z1, z2)), float(uniformity(z1))

    def rng_state(self) -> dict[str, Any]:
        state = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.cuda:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch"])
        if self.cuda and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)


def _eval_views(trainer: Trainer, shards: ShardSet, seed: int) -> Tensor:
    """The fixed evaluation batch: up to EVAL_OBJECTS objects, two views from a dedicated generator."""
    n = min(EVAL_OBJECTS, len(shards))
    idx = np.sort(np.random.default_rng([seed, 7919]).choice(len(shards), n, replace=False))
    images, mask = shards.gather(idx)
    gen = torch.Generator(device=trainer.device).manual_seed(seed + 2)
    return trainer.views(torch.from_numpy(images).to(trainer.device), torch.from_numpy(mask).to(trainer.device), gen)


def train_run(settings: dict, tensor_paths: list[tuple[str, str]], meta: dict, out_dir: Path,
              device: str | None = None, max_steps: int | None = None) -> dict:
    """Train one SimCLR run; resume from ``out_dir/checkpoint.pt`` if it matches.

    ``tensor_paths``: (images, mask) per shard. ``max_steps``: stop once the global step count
    reaches it (the schedule is still that of the full run), write checkpoint.pt and return
    with ``completed=False``; None = train to the end. Raises TrainingInterrupted after a
    checkpoint signal (checkpoint.pt written). Returns a summary dict (final metrics, paths).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    shards = ShardSet(tensor_paths)
    n_objects, in_channels = len(shards), shards.in_channels
    if n_objects < 2:
        raise ValueError(f"need at least 2 objects to train, got {n_objects}")
    if len(meta.get("bands", [])) != in_channels:
        raise ValueError(f"meta.json has bands {meta.get('bands')} but the tensors have {in_channels} channels")
    seed, epochs, batch_size = int(settings["seed"]), int(settings["epochs"]), int(settings["batch_size"])
    steps_per_epoch = len(batch_bounds(n_objects, batch_size))
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(float(settings["warmup_epochs"]) * steps_per_epoch))
    ckpt_every = int(settings["checkpoint_every_steps"])
    ckpt_path, fingerprint = out_dir / CHECKPOINT, _fingerprint(settings, shards)

    with determinism(bool(settings["deterministic"]), dev), SignalFlag().installed() as flag:
        trainer = Trainer(settings, in_channels, meta, dev)
        x_eval = _eval_views(trainer, shards, seed)
        step, epoch, batch_in_epoch, history = 0, 0, 0, []
        perm: np.ndarray | None = None
        acc = {"loss_sum": torch.zeros((), dtype=torch.float64, device=dev), "steps": 0, "objects": 0, "seconds": 0.0}
        if ckpt_path.exists():
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # RNG states stay CPU tensors
            if ckpt.get("fingerprint") != fingerprint or ckpt.get("format") != FORMAT_VERSION:
                log(f"ignoring {ckpt_path}: written for other settings or data")
            else:
                trainer.model.load_state_dict(ckpt["model"])
                trainer.optimizer.load_state_dict(ckpt["optimizer"])
                trainer.set_rng_state(ckpt["rng"])
                step, epoch, batch_in_epoch, history = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["history"]
                perm = ckpt["permutation"].cpu().numpy()
                acc = {**ckpt["acc"], "loss_sum": ckpt["acc"]["loss_sum"].to(dev)}
                log(f"resumed from {ckpt_path} at step {step} (epoch {epoch + 1}, batch {batch_in_epoch})")
        log(f"device {dev}{' (' + torch.cuda.get_device_name(dev) + ', bf16 autocast)' if dev.type == 'cuda' else ''}; "
            f"{count_parameters(trainer.model):,} parameters; {n_objects} objects x {in_channels} bands; "
            f"{epochs} epochs x {steps_per_epoch} steps = {total_steps} steps of <= {min(batch_size, n_objects)} objects")

        def checkpoint(next_batch: int, current_perm: np.ndarray) -> None:
            _save_atomic({
                "format": FORMAT_VERSION, "fingerprint": fingerprint, "step": step, "epoch": epoch,
                "batch_in_epoch": next_batch, "permutation": torch.from_numpy(current_perm),
                "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                "rng": trainer.rng_state(), "history": history,
                "acc": {**acc, "loss_sum": acc["loss_sum"].cpu()},
            }, ckpt_path)

        progress = Progress(total_steps, step)
        lr = lr_at(max(step - 1, 0), total_steps, warmup_steps, float(settings["lr"]))
        try:
            while epoch < epochs:
                if perm is None:
                    perm = epoch_permutation(n_objects, seed, epoch)
                loader = EpochLoader(shards, perm, batch_size, dev, start_batch=batch_in_epoch)
                t0 = time.perf_counter()
                try:
                    for k, batch in enumerate(loader, start=batch_in_epoch):
                        lr = lr_at(step, total_steps, warmup_steps, float(settings["lr"]))
                        loss = trainer.train_step(batch, lr)
                        acc["loss_sum"] += loss
                        acc["steps"] += 1
                        acc["objects"] += batch.images.shape[0]
                        step += 1
                        progress.update(step, epoch, lambda: float(acc["loss_sum"]) / acc["steps"], lr)
                        stop = flag.signum is not None or (max_steps is not None and step >= max_steps)
                        if stop or step % ckpt_every == 0:
                            if trainer.cuda:
                                torch.cuda.synchronize(dev)
                            acc["seconds"] += time.perf_counter() - t0
                            checkpoint(k + 1, perm)
                            t0 = time.perf_counter()
                        if flag.signum is not None and step < total_steps:
                            raise TrainingInterrupted(flag.signum, step, ckpt_path)
                        if max_steps is not None and step >= max_steps and step < total_steps:
                            log(f"stopped at max_steps={max_steps}; checkpoint {ckpt_path}")
                            return {"completed": False, "step": step, "checkpoint": str(ckpt_path)}
                finally:
                    loader.close()
                if trainer.cuda:
                    torch.cuda.synchronize(dev)
                acc["seconds"] += time.perf_counter() - t0
                align, unif = trainer.evaluate(x_eval)
                row = {"epoch": epoch + 1, "step": step, "loss": float(acc["loss_sum"]) / max(acc["steps"], 1),
                       "lr": lr, "images_per_s": acc["objects"] / max(acc["seconds"], 1e-9),
                       "alignment": align, "uniformity": unif}
                history.append(row)
                write_history(history, out_dir / HISTORY)
                log(f"epoch {epoch + 1}/{epochs} step {step} loss {row['loss']:.4f} lr {lr:.3e} "
                    f"{row['images_per_s']:.0f} objects/s alignment {align:.4f} uniformity {unif:.4f}")
                epoch, batch_in_epoch, perm = epoch + 1, 0, None
                acc = {"loss_sum": torch.zeros((), dtype=torch.float64, device=dev), "steps": 0, "objects": 0,
                       "seconds": 0.0}
        finally:
            progress.close()

        final = history[-1] if history else {}
        metrics = {**final, "n_objects": n_objects, "total_steps": total_steps}
        _save_atomic(model_payload(trainer.model, settings, meta, in_channels, metrics), out_dir / MODEL)
        ckpt_path.unlink(missing_ok=True)
        log(f"wrote {out_dir / MODEL}")
        return {"completed": True, "step": step, "model": str(out_dir / MODEL), **final}


def model_payload(model: nn.Module, settings: dict, meta: dict, in_channels: int, metrics: dict) -> dict:
    """The content of model.pt (everything ``workflow_scripts.embed`` needs, loadable with weights_only)."""
    return {
        "format": FORMAT_VERSION,
        "model_state": _cpu_state(model),
        "encoder": dict(settings["encoder"]),
        "in_channels": in_channels,
        "bands": list(meta["bands"]),
        "normalisation": {"method": settings["normalisation"], "params": dict(settings.get("normalisation_params", {}))},
        "meta": {k: meta[k] for k in ("bands", "stats", "size_px", "scale_arcsec", "pixel_scale_arcsec") if k in meta},
        "settings": settings,
        "metrics": metrics,
        "torch_version": str(torch.__version__),
    }


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.ssl.train", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", required=True,
                        help="the run's resolved training settings as JSON (or @file.json)")
    parser.add_argument("--meta", required=True, help="meta.json of the tensor scale")
    parser.add_argument("--images", nargs="+", required=True, help="<shard>.images.npy files (masks beside them)")
    parser.add_argument("--out-dir", required=True, help="results/runs/<run>")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    args = parser.parse_args(argv)

    text = args.settings
    try:
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        settings = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        parser.error(f"--settings: not valid JSON: {exc}")
    if not isinstance(settings, dict):
        parser.error("--settings: expected a JSON object of training settings")
    required = ("normalisation", "augment", "loss", "temperature", "margin", "epochs", "batch_size", "optimizer",
                "lr", "weight_decay", "warmup_epochs", "encoder", "seed", "deterministic", "checkpoint_every_steps")
    missing = [k for k in required if k not in settings]
    if missing:
        parser.error(f"--settings: missing keys {missing}")
    try:
        meta = json.loads(Path(args.meta).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        parser.error(f"--meta {args.meta}: cannot read: {exc}")
    paths = []
    for img in args.images:
        try:
            mask = mask_path_for(img)
        except ValueError as exc:
            parser.error(f"--images: {exc}")
        for p in (Path(img), mask):
            if not p.exists():
                parser.error(f"--images: {p} does not exist")
        paths.append((img, str(mask)))
    try:
        train_run(settings, paths, meta, Path(args.out_dir), device=args.device, max_steps=args.max_steps)
    except TrainingInterrupted as exc:
        log(f"{exc}; exit {EXIT_REQUEUE} (requeue)")
        return EXIT_REQUEUE
    return 0


if __name__ == "__main__":
    sys.exit(main())

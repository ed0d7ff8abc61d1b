"""Training loop, batched loader, checkpoint / resume and the embed stage, on tiny synthetic tensors.

64 objects x 7 bands x 35 x 35 px in two shards, four easy object types (point source in all
bands, a dropout seen only from z on, an extended blob, empty sky), a width-8 encoder: the
whole file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts.ssl.train import use_bf16

from workflow_scripts import embed as embed_mod
from workflow_scripts.ssl import train as train_mod
from workflow_scripts.ssl.data import EpochLoader, ShardSet, batch_bounds, epoch_permutation
from workflow_scripts.ssl.train import (EXIT_REQUEUE, HISTORY_COLUMNS, TrainingInterrupted, lr_at, train_run)

ROOT = Path(__file__).resolve().parents[1]
BANDS = ["g", "r", "i", "z", "y", "J", "Ks"]
SIZE = 35
N_PER_SHARD = 32

SETTINGS = {
    "scale_arcsec": 6.0, "normalisation": "asinh", "normalisation_params": {},
    "augment": {"flips_rotations": True, "shift_px": 1.0, "psf_blur_max_px": 0.5, "noise_scale": 0.5,
                "reddening_sigma": 0.03, "band_dropout": 0.0},
    "loss": "nt_xent", "temperature": 0.2, "margin": 0.5, "epochs": 3, "batch_size": 16, "optimizer": "adamw",
    "lr": 0.003, "weight_decay": 0.0001, "warmup_epochs": 0.5,
    "encoder": {"width": 8, "blocks": [1, 1], "repr_dim": 16, "proj_hidden_dim": 32, "proj_dim": 16},
    "seed": 3, "deterministic": True, "checkpoint_every_steps": 100, "embed_batch_size": 512,
}


def _render(kind: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE // 2
    img = rng.normal(0.0, 1.0, (len(BANDS), SIZE, SIZE)).astype(np.float32)
    amp = rng.uniform(30, 60)
    if kind == 0:  # point source in every band
        img += amp * np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))[None]
    elif kind == 1:  # dropout: nothing blueward of z
        img[3:] += amp * np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))[None]
    elif kind == 2:  # extended blob
        img += 0.3 * amp * np.exp(-(xx**2 + yy**2) / (2 * 5.0**2))[None]
    return img


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest (and reproducibly across processes) on one intra-op thread; the
    subprocesses get OMP_NUM_THREADS=1 (see _env)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Two shards of synthetic tensors + index parquets + meta.json."""
    root = tmp_path_factory.mktemp("tensors")
    rng = np.random.default_rng(0)
    images_paths, all_images = [], []
    for s, name in enumerate(["sa", "sb"]):
        images = np.stack([_render(i % 4, rng) for i in range(N_PER_SHARD)])
        mask = rng.random(images.shape) < 0.01
        mask[5, 6] = True  # one object without Ks coverage
        images[mask] = 0.0
        np.save(root / f"{name}.images.npy", images)
        np.save(root / f"{name}.mask.npy", mask)
        pd.DataFrame({"row": np.arange(N_PER_SHARD), "object_id": 1000 * (s + 1) + np.arange(N_PER_SHARD),
                      "ra": 0.0, "dec": 0.0}).to_parquet(root / f"{name}.index.parquet")
        images_paths.append(root / f"{name}.images.npy")
        all_images.append((images, mask))
    pix = np.concatenate([im for im, _ in all_images])
    good = ~np.concatenate([m for _, m in all_images])
    stats = {}
    for c, b in enumerate(BANDS):
        v = pix[:, c][good[:, c]]
        med = float(np.median(v))
        stats[b] = {"median": med, "sigma_mad": float(1.4826 * np.median(np.abs(v - med))), "std": float(v.std())}
    meta = {"scale_arcsec": 6.0, "pixel_scale_arcsec": 0.168, "size_px": SIZE, "bands": BANDS, "stats": stats}
    (root / "meta.json").write_text(json.dumps(meta))
    return {"root": root, "images": images_paths, "meta": meta, "meta_path": root / "meta.json",
            "pairs": [(str(p), str(p).replace(".images.npy", ".mask.npy")) for p in images_paths]}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def _history(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".part")]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted run of SETTINGS (checkpointing every step, as the resume runs do)."""
    out = tmp_path_factory.mktemp("reference")
    result = train_run({**SETTINGS, "checkpoint_every_steps": 1}, data["pairs"], data["meta"], out, device="cpu")
    assert result["completed"]
    return out


# ----------------------------------------------------------------------------- loader

def test_loader_gathers_across_shards_in_batches(data):
    shards = ShardSet(data["pairs"])
    assert len(shards) == 2 * N_PER_SHARD and shards.in_channels == 7
    full = np.concatenate([np.load(p) for p, _ in data["pairs"]])
    idx = np.array([40, 3, 31, 32, 63, 0])
    images, mask = shards.gather(idx)
    assert np.array_equal(images, full[np.sort(idx)])
    assert mask.dtype == bool and mask.shape == images.shape
    assert batch_bounds(64, 16) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert batch_bounds(33, 16) == [(0, 16), (16, 32)]  # a 1-object tail cannot be contrasted
    assert batch_bounds(10, 16) == [(0, 10)]
    perm = epoch_permutation(64, 3, 0)
    assert np.array_equal(perm, epoch_permutation(64, 3, 0)) and not np.array_equal(perm, epoch_permutation(64, 3, 1))
    threaded = [b.images for b in EpochLoader(shards, perm, 16, torch.device("cpu"), start_batch=1)]
    plain = [b.images for b in EpochLoader(shards, perm, 16, torch.device("cpu"), start_batch=1, prefetch=0)]
    assert len(threaded) == 3 and all(torch.equal(a, b) for a, b in zip(threaded, plain))


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


# ----------------------------------------------------------------------------- training

def test_history_model_and_no_leftovers(reference, data):
    rows = _history(reference / "history.csv")
    assert list(rows[0].keys()) == list(HISTORY_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and int(rows[-1]["step"]) == 12
    for r in rows:
        assert all(math.isfinite(float(r[c])) for c in HISTORY_COLUMNS)
        assert float(r["images_per_s"]) > 0 and 0 <= float(r["alignment"]) <= 4 and float(r["uniformity"]) <= 0
    assert not (reference / "checkpoint.pt").exists() and not _leftovers(reference)
    payload = torch.load(reference / "model.pt", map_location="cpu", weights_only=True)
    assert payload["in_channels"] == 7 and payload["bands"] == BANDS
    assert payload["normalisation"] == {"method": "asinh", "params": {}}
    assert payload["encoder"] == SETTINGS["encoder"] and payload["meta"]["stats"] == data["meta"]["stats"]
    assert payload["metrics"]["loss"] == pytest.approx(float(rows[-1]["loss"]))


def test_loss_decreases_on_easy_set(data, tmp_path):
    settings = {**SETTINGS, "epochs": 6, "augment": {"flips_rotations": True, "shift_px": 0.5}}
    train_run(settings, data["pairs"], data["meta"], tmp_path, device="cpu")
    losses = [float(r["loss"]) for r in _history(tmp_path / "history.csv")]
    assert losses[-1] < losses[0] - 0.1, losses


def test_same_seed_same_weights(reference, data, tmp_path):
    train_run({**SETTINGS, "checkpoint_every_steps": 1}, data["pairs"], data["meta"], tmp_path, device="cpu")
    _assert_same_weights(reference / "model.pt", tmp_path / "model.pt")


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch and at an epoch boundary
def test_resume_in_process_is_bit_identical(reference, data, tmp_path, stop_at):
    settings = {**SETTINGS, "checkpoint_every_steps": 1}
    first = train_run(settings, data["pairs"], data["meta"], tmp_path, device="cpu", max_steps=stop_at)
    assert not first["completed"] and (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "model.pt").exists()
    train_run(settings, data["pairs"], data["meta"], tmp_path, device="cpu")
    _assert_same_weights(reference / "model.pt", tmp_path / "model.pt")
    assert not (tmp_path / "checkpoint.pt").exists()
    ref_rows, rows = _history(reference / "history.csv"), _history(tmp_path / "history.csv")
    for c in ("epoch", "step", "loss", "lr", "alignment", "uniformity"):
        assert [r[c] for r in rows] == [r[c] for r in ref_rows]


def test_lars_optimizer_trains(data, tmp_path):
    result = train_run({**SETTINGS, "epochs": 1, "optimizer": "lars", "lr": 0.5}, data["pairs"], data["meta"],
                       tmp_path, device="cpu")
    assert result["completed"] and math.isfinite(result["loss"])
    assert all(torch.isfinite(v.float()).all() for v in _weights(tmp_path / "model.pt").values())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGURG])
def test_signals_stop_at_step_boundary_with_checkpoint(data, tmp_path, signum):
    """Each checkpoint signal, delivered during a step, stops training after that step."""
    real_step, before = train_mod.Trainer.train_step, signal.getsignal(signum)

    def step_then_signal(self, batch, lr):
        loss = real_step(self, batch, lr)
        os.kill(os.getpid(), signum)
        return loss

    train_mod.Trainer.train_step = step_then_signal
    try:
        with pytest.raises(TrainingInterrupted) as exc:
            train_run({**SETTINGS, "epochs": 1}, data["pairs"], data["meta"], tmp_path, device="cpu")
    finally:
        train_mod.Trainer.train_step = real_step
    assert exc.value.signum == signum and exc.value.step == 1
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["batch_in_epoch"] == 1
    assert not (tmp_path / "model.pt").exists() and not _leftovers(tmp_path)
    assert signal.getsignal(signum) == before  # the previous handler is back


# ----------------------------------------------------------------------------- kill and resume (subprocess)

def _cli(data, out: Path, settings: dict) -> list[str]:
    return [sys.executable, "-m", "workflow_scripts.ssl.train", "--settings", json.dumps(settings),
            "--meta", str(data["meta_path"]), "--images", *map(str, data["images"]), "--out-dir", str(out),
            "--device", "cpu"]


def _start_and_signal(data, out: Path, settings: dict, signum: int) -> subprocess.CompletedProcess:
    """Start the CLI, wait for its first checkpoint, send *signum*, wait for the exit."""
    proc = subprocess.Popen(_cli(data, out, settings), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.005)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_sigterm_kill_and_resume_is_bit_identical(reference, data, tmp_path):
    settings = {**SETTINGS, "checkpoint_every_steps": 1}
    killed = _start_and_signal(data, tmp_path, settings, signal.SIGTERM)
    assert killed.returncode == EXIT_REQUEUE, killed.stderr
    assert "SIGTERM" in killed.stderr
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "model.pt").exists()
    assert not _leftovers(tmp_path)
    stopped_at = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= stopped_at < 12
    resumed = subprocess.run(_cli(data, tmp_path, settings), cwd=ROOT, capture_output=True, text=True,
                             env=_env(), timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {tmp_path / 'checkpoint.pt'} at step {stopped_at}" in resumed.stderr
    _assert_same_weights(reference / "model.pt", tmp_path / "model.pt")
    assert not (tmp_path / "checkpoint.pt").exists() and not _leftovers(tmp_path)


def test_sigurg_through_the_cli_exits_requeue(data, tmp_path):
    """SIGURG (the signal that reaches a job under the Snakemake SLURM plugin) -> exit 75 + checkpoint."""
    killed = _start_and_signal(data, tmp_path, {**SETTINGS, "checkpoint_every_steps": 1}, signal.SIGURG)
    assert killed.returncode == EXIT_REQUEUE, killed.stderr
    assert "SIGURG" in killed.stderr
    assert (tmp_path / "checkpoint.pt").exists() and not _leftovers(tmp_path)


# ----------------------------------------------------------------------------- embed

def test_embed_matches_represent(reference, data, tmp_path):
    out = tmp_path / "embeddings.parquet"
    assert embed_mod.main(["--model", str(reference / "model.pt"), "--images", *map(str, data["images"]),
                           "--out", str(out), "--batch-size", "20", "--device", "cpu"]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == ["object_id", "shard"] + [f"h{k:03d}" for k in range(16)]
    assert len(df) == 2 * N_PER_SHARD and df["object_id"].dtype == np.int64
    assert df["h000"].dtype == np.float32 and df["shard"].tolist() == ["sa"] * 32 + ["sb"] * 32
    assert df["object_id"].tolist() == list(range(1000, 1032)) + list(range(2000, 2032))
    model, normalizer, payload = embed_mod.load_model(reference / "model.pt", torch.device("cpu"))
    images = torch.from_numpy(np.concatenate([np.load(p) for p, _ in data["pairs"]]))
    mask = torch.from_numpy(np.concatenate([np.load(m) for _, m in data["pairs"]]))
    bf16 = use_bf16(payload["settings"].get("precision", "auto"), torch.device("cpu"))  # as embed and training
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        x = normalizer(images, mask).contiguous(memory_format=torch.channels_last)
        h = model.represent(x).float().numpy()
    np.testing.assert_allclose(df[[f"h{k:03d}" for k in range(16)]].to_numpy(), h, rtol=1e-4, atol=1e-5)
    assert not _leftovers(tmp_path)


# ----------------------------------------------------------------------------- CLI errors

def test_train_cli_errors_name_the_problem(data, tmp_path, capsys):
    base = ["--meta", str(data["meta_path"]), "--images", *map(str, data["images"]), "--out-dir", str(tmp_path)]
    cases = [
        (["--settings", "{not json", *base], "--settings: not valid JSON"),
        (["--settings", json.dumps({"epochs": 1}), *base], "missing keys"),
        (["--settings", json.dumps(SETTINGS), "--meta", str(tmp_path / "nope.json"), "--images",
          str(data["images"][0]), "--out-dir", str(tmp_path)], "nope.json"),
        (["--settings", json.dumps(SETTINGS), "--meta", str(data["meta_path"]), "--images",
          str(data["root"] / "x.npy"), "--out-dir", str(tmp_path)], "<shard>.images.npy"),
        (["--settings", json.dumps(SETTINGS), "--meta", str(data["meta_path"]), "--images",
          str(data["root"] / "missing.images.npy"), "--out-dir", str(tmp_path)], "missing.images.npy does not exist"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exc:
            train_mod.main(argv)
        assert exc.value.code == 2
        assert expected in capsys.readouterr().err


def test_embed_cli_errors_name_the_problem(data, reference, tmp_path, capsys):
    cases = [
        (["--model", str(tmp_path / "none.pt"), "--images", str(data["images"][0]), "--out", "x"], "none.pt does not exist"),
        (["--model", str(reference / "model.pt"), "--images", str(data["root"] / "zz.images.npy"), "--out", "x"],
         "zz.images.npy does not exist"),
        (["--model", str(reference / "model.pt"), "--images", str(data["images"][0]), "--out", "x",
          "--batch-size", "0"], "--batch-size must be >= 1"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exc:
            embed_mod.main(argv)
        assert exc.value.code == 2
        assert expected in capsys.readouterr().err


def test_precision_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_bf16("auto", cuda) and use_bf16("bf16", cpu) and not use_bf16("fp32", cuda)
    with pytest.raises(ValueError, match="precision"):
        use_bf16("fp16", cpu)

"""Contrastive pretraining under torchrun DDP: the launcher the training flow calls, and the per-rank entry point.

    launch_ddp_pretrain(data, run_dir, cfg, nproc=2)      # from the flow (`loupe train --nproc 2`)
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m flows.ddp --data D --run-dir R --config R/ddp-config.yaml

Backend: nccl on CUDA (one GPU per rank: cuda:LOCAL_RANK), gloo on CPU. Every rank reads
the same data, builds the same initial encoder (seeded with `pretrain.seed`; DDP also
broadcasts rank 0's weights), and runs `pipeline.contrastive.pretrain.pretrain`, which
shards each global batch over the ranks and all-gathers the embeddings before the loss
(see its docstring): the loss and gradients are those of single-process training on the
same global batch. Only rank 0 writes files: the same run folder as `pretrain_step`
(config.yaml, encoder.pt, pretrain_state.pt, pretrain.json) plus `ddp-progress.json`
after every epoch. pretrain.json's `ddp` entry records the world size, backend and the
largest weight difference between ranks at the end (0.0: the ranks agree).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

PROGRESS_FILE = "ddp-progress.json"
CONFIG_FILE = "ddp-config.yaml"


def launch_ddp_pretrain(data: str | Path, run_dir: str | Path, cfg: Any, *, nproc: int, resume: bool = False, device: str = "cpu",
                        on_epoch: Callable[[int, float], None] | None = None, poll_seconds: float = 1.0) -> dict[str, Any]:
    """Run DDP pretraining in `nproc` processes with torchrun; returns the pretrain.json summary.

    cfg: a LoupeConfig (written to RUN_DIR/ddp-config.yaml for the ranks). on_epoch is called
    here, in the launching process, as rank 0 finishes epochs.
    """
    from pipeline.config import save_config

    if nproc < 2:
        raise ValueError(f"DDP needs nproc >= 2, got {nproc}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = save_config(run_dir / CONFIG_FILE, cfg)
    progress = run_dir / PROGRESS_FILE
    progress.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "flows.ddp",
           "--data", str(data), "--run-dir", str(run_dir), "--config", str(cfg_file), "--device", device]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, env=env)
    seen = 0
    try:
        while True:
            rc = proc.poll()
            seen = _report(progress, seen, on_epoch)
            if rc is not None:
                break
            time.sleep(poll_seconds)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    if rc != 0:
        raise RuntimeError(f"DDP pretraining with {nproc} processes failed (torchrun exit code {rc}); see its output above. "
                           f"The run folder {run_dir} keeps the last finished epoch: rerun to resume")
    return json.loads((run_dir / "pretrain.json").read_text())


def _report(progress: Path, seen: int, on_epoch: Callable[[int, float], None] | None) -> int:
    if on_epoch is None or not progress.is_file():
        return seen
    try:
        p = json.loads(progress.read_text())
    except (OSError, json.JSONDecodeError):
        return seen
    if int(p["epoch"]) > seen:
        on_epoch(int(p["epoch"]), float(p["loss"]))
        return int(p["epoch"])
    return seen


def _max_rank_difference(module: Any) -> float:
    """Largest absolute difference of any weight or buffer between this rank and the others (collective)."""
    import torch
    import torch.distributed as dist

    vec = torch.cat([t.detach().float().flatten().cpu() for t in module.state_dict().values()])
    if dist.get_backend() == "nccl":
        vec = vec.cuda()
    parts = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, vec)
    return float(max((p - parts[0]).abs().max().item() for p in parts))


def main(argv: list[str] | None = None) -> int:
    """Per-rank entry point (started by torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT are set)."""
    ap = argparse.ArgumentParser(description="Loupe DDP pretraining (one rank); start it with torchrun")
    ap.add_argument("--data", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--config", required=True, help="A resolved config YAML")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per local rank)")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist

    from pipeline.atomic import write_json_atomic
    from pipeline.config import load_config, pretrain_image_size, save_config
    from pipeline.contrastive.pretrain import pretrain
    from pipeline.data.tensors import load_images
    from pipeline.steps import CONFIG_FILE as RUN_CONFIG, git_commit, initial_encoder, load_run_config, now, read_samples

    cuda = args.device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = f"cuda:{local_rank}" if cuda else "cpu"
        run_dir = Path(args.run_dir)
        cfg = load_config(args.config)
        if args.resume and (run_dir / RUN_CONFIG).is_file() and load_run_config(run_dir) != cfg:
            raise ValueError(f"{run_dir / RUN_CONFIG} holds another config than this run; drop --resume or use a new run folder")
        samples, fp = read_samples(args.data, "train", False, cfg.encoder.in_channels)
        if rank == 0:
            save_config(run_dir / RUN_CONFIG, cfg)
        images = load_images(samples, pretrain_image_size(cfg), cfg.encoder.in_channels)
        encoder, init = initial_encoder(cfg)  # seeded: the same on every rank (DDP also broadcasts rank 0's)

        def on_epoch(epoch: int, loss: float) -> None:
            if rank == 0:
                write_json_atomic(run_dir / PROGRESS_FILE, {"epoch": epoch, "epochs": cfg.pretrain.epochs, "loss": loss})

        result = pretrain(images, encoder, cfg.pretrain, run_dir, resume=args.resume, device=device, progress=False,
                          meta={"data_fingerprint": fp, "init_weights": str(init) if init else None}, on_epoch=on_epoch)
        diff = _max_rank_difference(encoder)
        if rank == 0:
            summary = {
                "config": cfg.name, "method": cfg.pretrain.method, "epochs": cfg.pretrain.epochs, "n_images": len(samples),
                "data_fingerprint": fp, "init_weights": str(init) if init else None, "losses": result.losses,
                "seconds": result.seconds, "images_per_second": result.images_per_second, "commit": git_commit(), "created": now(),
                "ddp": {"world_size": world, "backend": backend, "rank_max_abs_diff": diff},
            }
            write_json_atomic(run_dir / "pretrain.json", summary)  # last: marks the folder complete
        dist.barrier()
        if diff != 0.0:
            raise RuntimeError(f"DDP ranks ended with different weights (max abs difference {diff})")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover - run by torchrun
    sys.exit(main())

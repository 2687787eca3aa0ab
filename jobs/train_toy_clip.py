"""Train a small open_clip CLIP on the toy world (CPU, about an hour) and save it in OpenAI .pt format.

    .venv/bin/python jobs/train_toy_clip.py --out build/toyclip               # models/toyclip/toyclip-v1.pt
    .venv/bin/python jobs/train_toy_clip.py --out build/toyclip --resume      # continue after a crash

The model is `open_clip.model.CLIP` with QuickGELU and 64-wide heads, so the saved state dict loads
with `open_clip.model.build_model_from_openai_state_dict` (and hence `model.pretrained: PATH`).

Training is plain image-text contrastive learning; the only twist is *what* the images are. Each
step mixes whole 224 px scenes with grid-aligned crops of 2-8 patches (using the crop's own window
of the 14 x 14 positional embedding, so every view is a piece of the inference geometry). Captions
name the classes a view contains, inside a random OpenAI ImageNet prompt template. Small crops are
nearly single-class, so the class token learns what a few patches of each class look like; this
is what the training-free dense methods later read out of the last block. Views whose caption names
the same set of classes count as positives for each other (multi-positive InfoNCE).

One deliberate nudge (`aux_attn_only`, on by default): the same contrastive loss is also applied to
the class token read from the last block's attention output alone, without its residual and MLP.
Real CLIPs have that property by themselves at scale (it is why ClearCLIP / SCLIP / NACLIP work);
a 9M-parameter model trained for 40 CPU minutes does not: without the nudge its class token knows
every class (98% on single-class crops) but the residual-free path reads things at 0% and dense
mIoU stalls near 0.30. With it, the attention-modifying methods work as they do on real CLIP, while
vanilla dense CLIP stays poor, as it is on real CLIP. The toy model is a test instrument for the
engine, not evidence about real CLIPs.

Outputs in --out: `state.pt` (resumable), `toyclip-step{N}.pt` (float16 OpenAI-format weights),
`best.pt` (best monitored dense mIoU), `log.jsonl` (one line per log/eval), `train_config.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Set before torch starts OpenMP: on a shared CPU, spinning worker threads waste the cores that
# other processes need and make every step wait for the slowest thread (measured 2-5x slower).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import open_clip  # noqa: E402
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES  # noqa: E402

from pipeline.io.atomic import atomic_local_path  # noqa: E402
from pipeline.toyworld.classes import NAMES, NUM_CLASSES, THINGS  # noqa: E402
from pipeline.toyworld.generator import generate_scene, join_names, split_seed  # noqa: E402

log = logging.getLogger("train_toy_clip")

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)  # OpenAI CLIP normalisation
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
PATCH = 16
GRID = 14


@dataclass
class TrainConfig:
    seed: int = 0  # model init and view sampling
    data_seed: int = split_seed("train")  # toy-world scene seed (train split)
    val_seed: int = split_seed("val")  # scenes used to monitor dense mIoU
    # model (head width 64 in both towers, as OpenAI-format loading infers heads = width // 64)
    embed_dim: int = 128
    vision_width: int = 192
    vision_layers: int = 12
    text_width: int = 64
    text_layers: int = 4
    context_length: int = 32
    # optimisation
    steps: int = 650
    minutes: float = 70.0  # wall-clock budget; the run stops (and saves) when it is spent
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup: int = 60
    weight_decay: float = 0.1
    bf16: bool = True  # CPU autocast; AMX makes it ~2x faster
    threads: int = 2
    # views per step: whole scenes, mid crops (one size per step), small crops (one size per step)
    n_full: int = 16
    n_mid: int = 48
    mid_sizes: list[int] = field(default_factory=lambda: [5, 6, 7, 8])
    n_small: int = 192
    small_sizes: list[int] = field(default_factory=lambda: [2, 3, 4])
    crop_min_share: float = 0.08  # a class is named in a crop caption above this pixel share
    thing_crop_frac: float = 0.3  # share of crops placed over a thing (each thing class has ~5x fewer pixels)
    aux_attn_only: float = 1.0  # weight of the same loss on the last block's attention output alone (see top)
    full_min_share: float = 0.005
    # scene pool
    pool: int = 3000
    refresh_per_step: int = 4
    # bookkeeping
    log_every: int = 20
    eval_every: int = 100
    eval_scenes: int = 48
    save_every: int = 100


# ---------------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig) -> CLIP:
    vision = CLIPVisionCfg(layers=cfg.vision_layers, width=cfg.vision_width, patch_size=PATCH, image_size=PATCH * GRID)
    text = CLIPTextCfg(context_length=cfg.context_length, width=cfg.text_width, heads=cfg.text_width // 64, layers=cfg.text_layers)
    return CLIP(cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def openai_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """float16 state dict with OpenAI key names (open_clip's CLIP already uses them)."""
    return {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}


def embed_patches(model: CLIP, pixels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Transformer input for grid-aligned crops: pixels (B, 3, s*16, s*16) normalised; rows/cols (B,)
    are each crop's top-left patch in the 14 x 14 grid, whose positional embeddings it gets.
    With s = 14 and zero offsets this equals open_clip's own embedding of a 224 px image. (B, 1+s*s, W)"""
    v = model.visual
    b, s = pixels.shape[0], pixels.shape[-1] // PATCH
    x = v.conv1(pixels).flatten(2).transpose(1, 2)  # (B, s*s, W)
    width = x.shape[-1]
    grid = v.positional_embedding[1:].view(GRID, GRID, width)
    r = rows[:, None] + torch.arange(s)  # (B, s)
    c = cols[:, None] + torch.arange(s)
    pos = grid[r[:, :, None], c[:, None, :]].reshape(b, s * s, width)  # (B, s*s, W)
    cls = (v.class_embedding + v.positional_embedding[0]).view(1, 1, width).expand(b, 1, width)
    x = torch.cat([cls.to(x.dtype), x + pos.to(x.dtype)], 1)  # (B, 1+s*s, W)
    return v.ln_pre(x)


def encode_views(model: CLIP, pixels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 attn_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image embeddings (B, D) of grid-aligned crops (see `embed_patches`) and, when `attn_only`,
    a second embedding (B, D) of the class token read from the last block's attention output alone
    (no residual, no MLP): the path that ClearCLIP / SCLIP / NACLIP read patch features from."""
    v = model.visual
    x = embed_patches(model, pixels, rows, cols)
    if not attn_only:
        x = v.transformer(x)
        return v.ln_post(x[:, 0]) @ v.proj, None
    blocks = v.transformer.resblocks
    for blk in blocks[:-1]:
        x = blk(x)
    last = blocks[-1]
    cls_attn = _attention(last, x, "qk")[:, 0]  # (B, W)
    x = last(x)
    return v.ln_post(x[:, 0]) @ v.proj, v.ln_post(cls_attn) @ v.proj


# ----------------------------------------------------------------------------------------- data


class ScenePool:
    """A ring of pre-generated train scenes; a few slots get fresh scenes every step.

    Slot contents are a pure function of (data_seed, step), so a resumed run sees the same data."""

    def __init__(self, cfg: TrainConfig, start_step: int = 0):
        self.cfg = cfg
        self.index = np.arange(cfg.pool)
        for step in range(start_step):  # replay earlier refreshes (cheap: indices only)
            self._refresh_indices(step)
        self.images = np.zeros((cfg.pool, GRID * PATCH, GRID * PATCH, 3), np.uint8)
        self.labels = np.zeros((cfg.pool, GRID * PATCH, GRID * PATCH), np.uint8)
        self.thing_patches = np.zeros((cfg.pool, GRID, GRID), bool)  # patches that hold a thing pixel
        for slot in range(cfg.pool):
            self._fill(slot)

    def _refresh_indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.cfg.seed, 7, step])
        slots = rng.choice(self.cfg.pool, self.cfg.refresh_per_step, replace=False)
        self.index[slots] = self.cfg.pool + step * self.cfg.refresh_per_step + np.arange(len(slots))
        return slots

    def _fill(self, slot: int) -> None:
        scene = generate_scene(self.cfg.data_seed, int(self.index[slot]))
        self.images[slot], self.labels[slot] = scene.image, scene.label
        is_thing = np.isin(scene.label, THINGS).reshape(GRID, PATCH, GRID, PATCH)
        self.thing_patches[slot] = is_thing.any(axis=(1, 3))

    def refresh(self, step: int) -> None:
        for slot in self._refresh_indices(step):
            self._fill(int(slot))


def present(label_crop: np.ndarray, min_share: float) -> tuple[int, ...]:
    counts = np.bincount(label_crop.ravel(), minlength=NUM_CLASSES)
    return tuple(int(c) for c in np.flatnonzero(counts >= max(min_share * label_crop.size, 1)))


def sample_views(pool: ScenePool, rng: np.random.Generator, n: int, s: int, min_share: float, thing_frac: float = 0.0):
    """n crops of s x s patches at random grid positions of random pool scenes (random h-flip); a
    `thing_frac` share of them is placed over a random thing patch when the scene has one.
    Returns pixels uint8 (n, H, W, 3), rows, cols (n,), class sets (list of tuples)."""
    slots = rng.integers(0, len(pool.index), n)
    rows = rng.integers(0, GRID - s + 1, n)
    cols = rng.integers(0, GRID - s + 1, n)
    flips = rng.random(n) < 0.5
    if thing_frac > 0 and s < GRID:
        for i in np.flatnonzero(rng.random(n) < thing_frac):
            cells = np.argwhere(pool.thing_patches[slots[i]])  # (K, 2)
            if len(cells):
                r, c = cells[rng.integers(len(cells))]
                rows[i] = np.clip(r - rng.integers(s), 0, GRID - s)
                cols[i] = np.clip(c - rng.integers(s), 0, GRID - s)
    px = s * PATCH
    pixels = np.empty((n, px, px, 3), np.uint8)
    sets = []
    for i in range(n):
        y, x = rows[i] * PATCH, cols[i] * PATCH
        img = pool.images[slots[i], y : y + px, x : x + px]
        lab = pool.labels[slots[i], y : y + px, x : x + px]
        if flips[i]:  # mirror the content *and* the position so positional embeddings stay truthful
            img = img[:, ::-1]
            cols[i] = GRID - s - cols[i]
        pixels[i] = img
        sets.append(present(lab, min_share))
    return pixels, rows, cols, sets


def caption(rng: np.random.Generator, classes: tuple[int, ...]) -> str:
    names = [NAMES[c] for c in rng.permutation(np.asarray(classes, np.int64))]
    template = OPENAI_IMAGENET_TEMPLATES[int(rng.integers(len(OPENAI_IMAGENET_TEMPLATES)))]
    return template(join_names(names))


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    return (x - MEAN) / STD


# ----------------------------------------------------------------------------------------- loss


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same class set is a positive. img, txt: (N, D)
    normalised; keys: (N,) class-set bitmasks."""
    logits = scale * img @ txt.t()  # (N, N)
    pos = (keys[:, None] == keys[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def class_key(classes: tuple[int, ...]) -> int:
    return sum(1 << c for c in classes)


# ------------------------------------------------------------------------------ dense monitoring


@torch.no_grad()
def class_text_features(model: CLIP, tokenizer) -> torch.Tensor:
    """(C, D) normalised class embeddings, averaged over the 80 ImageNet templates."""
    feats = []
    for name in NAMES:
        tokens = tokenizer([t(name) for t in OPENAI_IMAGENET_TEMPLATES])
        f = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(0)
        feats.append(F.normalize(f, dim=-1))
    return torch.stack(feats)


def _last_block_dense(block, x: torch.Tensor, mode: str, gauss: torch.Tensor | None) -> torch.Tensor:
    """Patch outputs of the last block. mode: vanilla (the block as trained), clearclip (q-q attention,
    no residual, no MLP), naclip (k-k attention plus a Gaussian window, no residual, no MLP)."""
    if mode == "vanilla":
        return block(x)[:, 1:]
    return _attention(block, x, "qq" if mode == "clearclip" else "kk", gauss)[:, 1:]


def _attention(block, x: torch.Tensor, kind: str, gauss: torch.Tensor | None = None) -> torch.Tensor:
    """Output (B, N, W) of `block`'s attention alone (after out_proj; no residual, no MLP) with
    logits q.k (the trained attention), q.q (ClearCLIP) or k.k plus an optional window prior (NACLIP)."""
    attn = block.attn
    b, n, w = x.shape
    heads = attn.num_heads
    h = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = h.view(b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # each (B, heads, N, hd)
    scale = (w // heads) ** -0.5
    if kind == "qk":
        logits = q @ k.transpose(-1, -2) * scale
    elif kind == "qq":
        logits = q @ q.transpose(-1, -2) * scale
    else:
        logits = k @ k.transpose(-1, -2) * scale
        if gauss is not None:
            logits[..., 1:, 1:] += gauss  # (N-1, N-1) window prior between patches
    out = logits.softmax(-1) @ v  # (B, heads, N, hd)
    out = out.transpose(1, 2).reshape(b, n, w)
    return attn.out_proj(out)


def gaussian_window(std: float = 5.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    p = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * std**2))  # (N, N); NACLIP adds this to the attention logits


@torch.no_grad()
def dense_miou(model: CLIP, tokenizer, seed: int, count: int, modes=("vanilla", "clearclip", "naclip")) -> dict[str, float]:
    """Monitoring only: mIoU of the three last-block variants on `count` scenes of `seed`."""
    model.eval()
    text = class_text_features(model, tokenizer)
    gauss = gaussian_window()
    conf = {m: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for m in modes}
    v = model.visual
    for start in range(0, count, 16):
        scenes = [generate_scene(seed, i) for i in range(start, min(start + 16, count))]
        zeros = torch.zeros(len(scenes), dtype=torch.int64)
        x = embed_patches(model, to_tensor(np.stack([s.image for s in scenes])), zeros, zeros)
        for blk in v.transformer.resblocks[:-1]:
            x = blk(x)
        labels = torch.from_numpy(np.stack([s.label for s in scenes]).astype(np.int64))
        for m in modes:
            tokens = _last_block_dense(v.transformer.resblocks[-1], x, m, gauss)
            feats = F.normalize(v.ln_post(tokens) @ v.proj, dim=-1)  # (B, 196, D)
            logits = (feats @ text.t()).transpose(1, 2).reshape(len(scenes), NUM_CLASSES, GRID, GRID)
            pred = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
            conf[m] += np.bincount((labels * NUM_CLASSES + pred).flatten().numpy(), minlength=NUM_CLASSES**2).reshape(
                NUM_CLASSES, NUM_CLASSES)
    model.train()
    out = {}
    for m, c in conf.items():
        inter = np.diag(c)
        union = c.sum(0) + c.sum(1) - inter
        out[m] = float(np.mean(inter[union > 0] / union[union > 0]))
    return out


# ------------------------------------------------------------------------------------- training


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: CLIP, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or name == "logit_scale" else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def train_step(model, tokenizer, pool, cfg: TrainConfig, step: int) -> dict[str, float]:
    rng = np.random.default_rng([cfg.seed, 11, step])
    groups = [
        (cfg.n_full, GRID, cfg.full_min_share),
        (cfg.n_mid, int(rng.choice(cfg.mid_sizes)), cfg.crop_min_share),
        (cfg.n_small, int(rng.choice(cfg.small_sizes)), cfg.crop_min_share),
    ]
    embeds, aux, sets = [], [], []
    use_aux = cfg.aux_attn_only > 0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        for n, s, share in groups:
            if n == 0:
                continue
            pixels, rows, cols, group_sets = sample_views(pool, rng, n, s, share, cfg.thing_crop_frac)
            emb, emb_aux = encode_views(model, to_tensor(pixels), torch.from_numpy(rows), torch.from_numpy(cols), use_aux)
            embeds.append(emb)
            aux.append(emb_aux)
            sets.extend(group_sets)
        captions = [caption(rng, c) for c in sets]
        txt = model.encode_text(tokenizer(captions))
    txt = F.normalize(txt.float(), dim=-1)
    keys = torch.tensor([class_key(c) for c in sets])
    scale = model.logit_scale.exp().clamp(max=100)
    loss = multi_positive_clip_loss(F.normalize(torch.cat(embeds).float(), dim=-1), txt, keys, scale)
    out = {"loss": loss, "views": len(sets)}
    if use_aux:
        loss_aux = multi_positive_clip_loss(F.normalize(torch.cat(aux).float(), dim=-1), txt, keys, scale)
        out["loss"] = loss + cfg.aux_attn_only * loss_aux
    return out


def save_state(path: Path, model, opt, step: int, cfg: TrainConfig, elapsed: float, best: float) -> None:
    with atomic_local_path(path) as tmp:  # random temporary, created exclusively
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "config": asdict(cfg),
                    "elapsed": elapsed, "best": best}, tmp)


def save_weights(path: Path, model) -> None:
    with atomic_local_path(path) as tmp:  # random temporary, created exclusively
        torch.save(openai_state_dict(model), tmp)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    kinds = {"int": int, "float": float, "bool": lambda text: text.lower() in ("1", "true", "yes")}
    for f in dataclasses.fields(TrainConfig):
        if f.type in kinds:  # list fields keep their defaults
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kinds[f.type], default=None)
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace, state: dict | None) -> TrainConfig:
    """Defaults (or the resumed run's config), then the command-line values given."""
    cfg = TrainConfig(**state["config"]) if state else TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, value)
    return cfg


def write_run_info(out: Path, cfg: TrainConfig) -> None:
    info = {"config": asdict(cfg), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, {cfg.threads} threads"}
    (out / "train_config.json").write_text(json.dumps(info, indent=2))


def log_record(logf, rec: dict) -> None:
    log.info("%s", rec)
    logf.write(json.dumps(rec) + "\n")
    logf.flush()


def train(cfg: TrainConfig, out: Path, state: dict | None) -> float:
    """The training loop; returns the best monitored dense mIoU."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    opt = make_optimizer(model, cfg)
    step, elapsed, best = 0, 0.0, -1.0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed, best = state["step"], state["elapsed"], state["best"]
        log.info("resumed at step %d (%.1f min done)", step, elapsed / 60)
    write_run_info(out, cfg)
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=cfg.context_length)
    t0 = time.time()
    pool = ScenePool(cfg, step)
    log.info("scene pool of %d ready in %.0fs; params %.2fM", cfg.pool, time.time() - t0,
             sum(p.numel() for p in model.parameters()) / 1e6)

    model.train()
    t_start = time.time() - elapsed
    losses: list[float] = []
    with (out / "log.jsonl").open("a") as logf:
        while step < cfg.steps and time.time() - t_start < cfg.minutes * 60:
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            loss = train_step(model, tokenizer, pool, cfg, step)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            pool.refresh(step)
            step += 1
            losses.append(loss.item())
            minutes = (time.time() - t_start) / 60
            if step % cfg.log_every == 0:
                log_record(logf, {"step": step, "loss": float(np.mean(losses)), "lr": lr_at(cfg, step),
                                  "scale": model.logit_scale.exp().item(), "minutes": minutes})
                losses = []
            last = step >= cfg.steps or minutes >= cfg.minutes
            if step % cfg.eval_every == 0 or last:
                scores = dense_miou(model, tokenizer, cfg.val_seed, cfg.eval_scenes)
                log_record(logf, {"step": step, "eval": scores, "minutes": (time.time() - t_start) / 60})
                if max(scores.values()) > best:
                    best = max(scores.values())
                    save_weights(out / "best.pt", model)
            if step % cfg.save_every == 0 or last:
                save_weights(out / f"toyclip-step{step}.pt", model)
                save_state(out / "state.pt", model, opt, step, cfg, time.time() - t_start, best)
    log.info("done at step %d after %.1f min; best monitored mIoU %.3f", step, (time.time() - t_start) / 60, best)
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "state.pt"
    # weights_only: the state is tensors and plain values; a pickle that would run code is refused
    state = torch.load(state_path, map_location="cpu", weights_only=True) if args.resume and state_path.exists() else None
    train(resolve_config(args, state), args.out, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())

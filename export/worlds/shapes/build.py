"""Builds the shapes world: trains the tiny CLIP and the judge on procedural images, writes their weights.

    spec = build_models(Path("engines/shapes"))   # ~ a few minutes on one CPU thread

The generator needs no training (renderer.py). Both trained models see only data.py's images, freshly
drawn every step, never the renderer's; the returned spec says how to rebuild every piece.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tr0n_rt.tokenizer import WordTokenizer

from ...checkpoints import save_state
from . import data
from .judge import HEADS, JudgeNet
from .renderer import ShapesRenderer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CONTEXT_LENGTH = 16

WORLD_INFO = {
    "name": "shapes",
    "condition": "text",
    # condition_noise is relative to the embedding norm (CLIP embeddings are unit norm here).
    "translator": {"n_pairs": 20000, "condition_noise": 0.6, "num_components": 10},
}


def clip_config(vocab_size: int) -> dict:
    """JSON-able keyword arguments of open_clip.CLIP: a ModifiedResNet image tower (32 px -> 1x1, attention
    pool) and a 3-layer text transformer over the world's word tokens."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "head_width": 32, "image_size": data.IMAGE_SIZE},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": vocab_size, "width": 128, "heads": 4,
                     "layers": 3},
        "quick_gelu": False,
    }


def clip_inputs(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, S, S] in [-1, 1] -> [0, 1] -> CLIP mean/std, as the image tower was trained."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """DiffAugment's policy (colour, translation 1/8, cutout 1/2) on a random fraction p of the images
    [N, 3, S, S] in [-1, 1], so the CLIP stays informative on the augmented copies TR0N's energy scores."""
    n, _, s, _ = images.shape

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator)

    x = images + u(-0.5, 0.5)                                                   # brightness
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * u(0.0, 2.0) + mean                                         # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.5, 1.5) + mean                                         # contrast
    m = s // 8                                                                  # translation, zero fill
    x = F.pad(x, (m, m, m, m))
    dy, dx = (torch.randint(0, 2 * m + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(s)).view(n, 1, s, 1).expand(n, 3, s, s + 2 * m)
    cols = (dx[:, None] + torch.arange(s)).view(n, 1, 1, s).expand(n, 3, s, s)
    x = x.gather(2, rows).gather(3, cols)
    c = s // 2                                                                  # cutout, zero fill
    cy, cx = (torch.randint(0, s + 1 - c % 2, (n, 1, 1), generator=generator) for _ in range(2))
    grid = torch.arange(s)
    keep = ~(((grid.view(1, s, 1) - cy + c // 2).clamp(min=-1) // c == 0)
             & ((grid.view(1, 1, s) - cx + c // 2).clamp(min=-1) // c == 0))
    x = x * keep[:, None].float()
    chosen = torch.rand(n, 1, 1, 1, generator=generator) < p
    return torch.where(chosen, x, images)


def _names(attrs: list[data.Attributes]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> shape, colour, background indices [N] each."""
    return (torch.tensor([data.SHAPES.index(a.shape) for a in attrs]),
            torch.tensor([data.COLOUR_NAMES.index(a.colour) for a in attrs]),
            torch.tensor([data.BACKGROUND_NAMES.index(a.background) for a in attrs]))


def matches(prompts: list[str], attrs: list[data.Attributes]) -> torch.Tensor:
    """[len(prompts), len(attrs)] bool: image j shows every attribute prompt i names (the positives)."""
    s, c, b = _names(attrs)
    rows = []
    for p in prompts:
        w = data.parse_prompt(p)
        m = torch.ones(len(attrs), dtype=torch.bool)
        for name, idx, names in (("shape", s, data.SHAPES), ("colour", c, data.COLOUR_NAMES),
                                 ("background", b, data.BACKGROUND_NAMES)):
            if w[name] is not None:
                m &= idx == names.index(w[name])
        rows.append(m)
    return torch.stack(rows)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """CLIP loss with several positives: img, txt [B, D] unit norm, pos [B_txt, B_img] bool (diagonal true).
    Each direction is a cross-entropy against the uniform distribution over its positives."""
    logits = scale * txt @ img.t()                                  # [B_txt, B_img]
    p = pos.float()
    t2i = -(F.log_softmax(logits, 1) * (p / p.sum(1, keepdim=True))).sum(1).mean()
    i2t = -(F.log_softmax(logits, 0) * (p / p.sum(0, keepdim=True))).sum(0).mean()
    return (t2i + i2t) / 2


def _cosine_lr(opt: torch.optim.Optimizer, step: int, total: int, lr: float, warmup: int) -> None:
    f = (step + 1) / warmup if step < warmup else 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup)))
    for g in opt.param_groups:
        g["lr"] = lr * f


def _optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip: list | None, bar, step: int) -> None:
    """One step on loss (gradient norm clipped to 1 over `clip`'s parameters, if given); the bar shows
    the loss every 20 steps."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    if step % 20 == 0:
        bar.set_postfix(loss=f"{loss.item():.4f}")


def train_clip(tokenizer: WordTokenizer, steps: int = 1000, batch: int = 256, lr: float = 2e-3, seed: int = 0,
               augment_p: float = 0.5, progress: bool = True) -> tuple[open_clip.CLIP, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = clip_config(tokenizer.vocab_size)
    model = open_clip.CLIP(**cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    params = list(model.parameters())
    bar = tqdm(range(steps), desc="shapes CLIP", disable=not progress, mininterval=2.0)
    for step in bar:
        _cosine_lr(opt, step, steps, lr, warmup=100)
        images, captions, attrs = data.sample_batch(batch, rng, partial=0.1)
        pos = matches(captions, attrs)
        if augment_p > 0:
            images = augment(images, gen, augment_p)
        img = F.normalize(model.encode_image(clip_inputs(images)), dim=-1)
        txt = F.normalize(model.encode_text(torch.from_numpy(tokenizer(captions))), dim=-1)
        loss = contrastive_loss(img, txt, model.logit_scale.exp().clamp(max=100), pos)
        _optimizer_step(opt, loss, params, bar, step)
    return model.eval(), cfg


# adapt_image_tower's recipe: ~110 s on 2 threads. Measured on the CLIP shipped on 2026-12-06 (held-out
# pictures drawn by benchmarks/hand_drawn.py, best of the 90 full captions): hard edges 0.92 -> 0.97,
# jittered 0.88 -> 0.97, off-palette 0.86 -> 0.94, outlines 0.23 -> 0.84; the world's own pictures
# 0.997 -> 0.993, their embeddings moved by a mean cosine of 0.997. A third term keeping G's images
# where they were (the min cosine of G's images to before went from 0.83 to 0.98) made the rebuilt
# world worse on hand-made pictures (93.5% vs 95.4%) for no gain on text prompts: left out.
ADAPT_STEPS, ADAPT_BATCH, ADAPT_LR = 1000, 128, 1e-3


def adapt_image_tower(model: open_clip.CLIP, steps: int = ADAPT_STEPS, batch: int = ADAPT_BATCH,
                      lr: float = ADAPT_LR, seed: int = 0, augment_p: float = 0.5,
                      progress: bool = True) -> open_clip.CLIP:
    """Teaches the image tower to read pictures drawn as people draw them (data.sample_styles: hard
    edges, jittered vertices, outlines, off-palette colours) as the world's own, by distillation from
    itself, with the text tower untouched:

        loss = mean(1 - cos(s(A(x_styled)), t(A(x))))      styled pictures land where their own kind does
             + mean(1 - cos(s(A(x)), t(A(x))))             and the world's own pictures stay put

    t: the trained tower, frozen; s: the tower being adapted; x, x_styled: the same attributes drawn in
    the world's style and in another; A: one augmentation draw (build.augment) shared by both. The
    second term keeps what the text tower was trained against, and so what prompts mean; BatchNorm
    statistics stay frozen for the same reason. The world's pairs and translators are then made with
    the adapted tower. Contrastive training on such pictures instead cost text prompts 1-2.5 points
    (benchmarks/RESULTS.md, "Image conditioning on hand-made images")."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 3])
    teacher = copy.deepcopy(model.visual).eval().requires_grad_(False)
    student = model.visual
    model.requires_grad_(False)
    student.requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 3)
    model.eval()  # BatchNorm keeps its running statistics
    params = list(student.parameters())
    bar = tqdm(range(steps), desc="shapes CLIP styles", disable=not progress, mininterval=2.0)
    for step in bar:
        _cosine_lr(opt, step, steps, lr, warmup=20)
        attrs = data.sample_attributes(batch, rng)
        own = data.render(attrs)
        styled = data.render(attrs, styles=data.sample_styles(batch, rng, p=1.0))
        state = gen.get_state()
        own = augment(own, gen, augment_p)
        gen.set_state(state)  # the same draw for the styled copies
        styled = augment(styled, gen, augment_p)
        with torch.no_grad():
            target = F.normalize(teacher(clip_inputs(own)), dim=-1)
        s_own = F.normalize(student(clip_inputs(own)), dim=-1)
        s_styled = F.normalize(student(clip_inputs(styled)), dim=-1)
        loss = (1 - (s_styled * target).sum(-1)).mean() + (1 - (s_own * target).sum(-1)).mean()
        _optimizer_step(opt, loss, params, bar, step)
    return model.requires_grad_(True).eval()


def train_judge(steps: int = 2000, batch: int = 128, lr: float = 3e-3, seed: int = 0,
                progress: bool = True) -> JudgeNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    net = JudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    net.train()
    bar = tqdm(range(steps), desc="shapes judge", disable=not progress, mininterval=2.0)
    for step in bar:
        _cosine_lr(opt, step, steps, lr, warmup=50)
        attrs = data.sample_attributes(batch, rng)
        logits = net(data.render(attrs))
        loss = sum(F.cross_entropy(logits[k], t) for k, t in zip(HEADS, _names(attrs)))
        _optimizer_step(opt, loss, None, bar, step)
    return net.eval()


@torch.no_grad()
def evaluate_clip(model: open_clip.CLIP, tokenizer: WordTokenizer, n: int = 1500, seed: int = 12345) -> dict:
    """Held-out procedural images (a seed training never uses):
    t2i_top1:    over data.evaluation_prompts(), the top-1 image of the gallery shows what the prompt names;
    i2t_top1:    each image's best of the 30 "a {colour} {shape}" captions is its shape + colour;
    background:  each image's best of the 3 "... on a {background} background" captions (its own shape and colour);
    i2t_styled:  i2t_top1 on the same attributes drawn in other styles (data.sample_styles)."""
    rng = np.random.default_rng(seed)
    attrs = data.sample_attributes(n, rng)
    img = F.normalize(model.encode_image(clip_inputs(data.render(attrs))), dim=-1)
    styled = F.normalize(model.encode_image(clip_inputs(
        data.render(attrs, styles=data.sample_styles(n, rng, p=1.0)))), dim=-1)

    def text(prompts):
        return F.normalize(model.encode_text(torch.from_numpy(tokenizer(prompts))), dim=-1)

    prompts = data.evaluation_prompts()
    pos = matches(prompts, attrs)
    t2i = pos[torch.arange(len(prompts)), (text(prompts) @ img.t()).argmax(1)].float().mean().item()
    pairs = [f"a {c} {s}" for s in data.SHAPES for c in data.COLOUR_NAMES]
    right = matches(pairs, attrs).t()
    i2t = right[torch.arange(n), (img @ text(pairs).t()).argmax(1)].float().mean().item()
    i2t_styled = right[torch.arange(n), (styled @ text(pairs).t()).argmax(1)].float().mean().item()
    bg_prompts = [f"a {a.colour} {a.shape} on a {b} background" for a in attrs for b in data.BACKGROUND_NAMES]
    bg_sim = (text(bg_prompts).view(n, 3, -1) * img[:, None, :]).sum(-1)      # [n, 3]
    bg = (bg_sim.argmax(1) == _names(attrs)[2]).float().mean().item()
    return {"t2i_top1": t2i, "i2t_top1": i2t, "background": bg, "i2t_styled": i2t_styled}


@torch.no_grad()
def evaluate_judge(net: JudgeNet, n: int = 2000, seed: int = 54321) -> dict:
    """Accuracy per head and for all three at once, on held-out procedural images."""
    attrs = data.sample_attributes(n, np.random.default_rng(seed))
    logits = net(data.render(attrs))
    right = {k: logits[k].argmax(1) == t for k, t in zip(HEADS, _names(attrs))}
    out = {k: v.float().mean().item() for k, v in right.items()}
    out["all"] = (right["shape"] & right["colour"] & right["background"]).float().mean().item()
    return out


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors stored as float16 (half the file; load_state_dict casts back to the model's float32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def build_models(out_dir: Path, seed: int = 0, progress: bool = True, clip_steps: int = 1000,
                 judge_steps: int = 2000, adapt_steps: int = ADAPT_STEPS) -> dict:
    """Trains the tiny CLIP, adapts its image tower to hand-made styles (adapt_image_tower), trains the
    judge, writes clip.safetensors and judge.safetensors into out_dir, and returns the world spec
    (generator, condition model, tokenizer, judge, evaluation prompts).

    About 4 + 2 + 4 minutes on 2 CPU threads with the default steps, which reach 100% text->image
    retrieval and 100% judge accuracy on held-out procedural images."""
    out_dir = Path(out_dir)
    t0 = time.time()
    tokenizer = WordTokenizer(data.VOCAB, context_length=CONTEXT_LENGTH, aliases=data.ALIASES)
    clip, cfg = train_clip(tokenizer, steps=clip_steps, seed=seed, progress=progress)
    if adapt_steps:
        clip = adapt_image_tower(clip, steps=adapt_steps, seed=seed, progress=progress)
    save_state(_half(clip.state_dict()), out_dir / "clip.safetensors")
    judge = train_judge(steps=judge_steps, seed=seed, progress=progress)
    save_state(_half(judge.state_dict()), out_dir / "judge.safetensors")
    if progress:
        tqdm.write(f"shapes world built in {time.time() - t0:.0f} s; "
                   f"CLIP {evaluate_clip(clip, tokenizer)}; judge {evaluate_judge(judge)}")
    return {
        "generator": {"family": "shapes_renderer", "config": ShapesRenderer().config(), "weights": None},
        "condition_model": {"family": "open_clip",
                            "config": {"model_cfg": cfg, "image_mean": CLIP_MEAN, "image_std": CLIP_STD},
                            "weights": "clip.safetensors"},
        "tokenizer": tokenizer.to_dict(),
        "judge": {"family": "shapes_judge", "config": judge.config(), "weights": "judge.safetensors"},
        "condition": "text",
        "prompts": data.evaluation_prompts(),
    }


def build_aesthetic(out_dir: Path, condition_model, seed: int = 0) -> dict:
    """Fits the world's size-loving aesthetic head (aesthetic.py) and writes aesthetic.safetensors."""
    from .aesthetic import fit_size_head

    head, fit = fit_size_head(condition_model, seed=seed + 4242)
    save_state(head.state_dict(), Path(out_dir) / "aesthetic.safetensors")
    return {"weights": "aesthetic.safetensors", "kind": "linear head on the CLIP image embedding",
            "taste": "larger shapes (standardised radius)", "fit": fit}

"""One episode of a trained agent as frames, with its RIMs activation pattern per step (paper Fig. 2) and, for
a policy reading an input set, where each unit's input attention falls on the view at each step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rims_rl.agents.config import ConfigError
from rims_rl.agents.evaluate import load_model, load_run, play_episode, render_env, with_distractors
from rims_rl.agents.runs import check_writable
from rims_rl.rims import RIMs

__all__ = ["visualize_run"]


@torch.no_grad()
def _step_details(policy, core: RIMs, obs, state, start) -> tuple[np.ndarray, np.ndarray | None]:
    """The units the actor's core activates on this step, the same call ``predict`` makes, with details; and
    for a core reading a set, each unit's attention over the rows, averaged over heads, null row first
    ``(K, N + 1)`` (else None)."""
    obs_tensor, _ = policy.obs_to_tensor(obs)
    features = policy.extract_features(obs_tensor)
    if not policy.share_features_extractor:
        features = features[0]
    x = features.view(1, 1, -1) if policy.core_rows is None else features.view(1, 1, policy.core_rows, -1)
    if state is None:
        hidden = core.initial_state(1, features.device, features.dtype)
    else:
        hidden = tuple(torch.as_tensor(s, device=features.device, dtype=features.dtype) for s in state)
    starts = torch.as_tensor(start, dtype=features.dtype, device=features.device).reshape(1, 1)
    _, _, details = core.forward_with_details(x, hidden, starts)
    attention = details.input_attention[0, 0].mean(1).cpu().numpy() if policy.core_rows else None
    return details.active[0, 0].cpu().numpy(), attention


def _raster(active: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, units = active.shape
    # A column per step up to a page's width (16 in, about 1,900 px): a long episode's steps share pixels.
    fig, ax = plt.subplots(figsize=(min(max(4.0, steps * 0.18), 16.0), 0.4 * units + 1.4))
    ax.imshow(active.T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("step")
    ax.set_ylabel("unit")
    ax.set_yticks(range(units))
    ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _heat(grid: np.ndarray) -> np.ndarray:
    """A unit's attention over a grid as RGB (viridis), scaled to its own maximum."""
    from matplotlib import colormaps

    top = grid.max()
    return (colormaps["viridis"](grid / top if top > 0 else grid)[..., :3] * 255).astype(np.uint8)


def _annotated(frame: np.ndarray, active: np.ndarray | None, step: int, grids: np.ndarray | None = None):
    """The frame with a strip below it: one square per unit, dark when active; for a set policy, each unit's
    attention over the view beside the frame (a column of heat maps, framed red where the unit is active)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    if active is None:
        return image
    if grids is not None:
        units = grids.shape[0]
        side = max(24, min(image.height // units - 4, 96))
        column = Image.new("RGB", (side + 8, image.height), "white")
        draw = ImageDraw.Draw(column)
        for unit in range(units):
            top = 2 + unit * (side + 4)
            heat = Image.fromarray(_heat(grids[unit])).resize((side, side), Image.NEAREST)
            column.paste(heat, (4, top))
            if active[unit]:
                draw.rectangle((2, top - 2, side + 5, top + side + 1), outline="red", width=2)
        wide = Image.new("RGB", (image.width + column.width, image.height), "white")
        wide.paste(image, (0, 0))
        wide.paste(column, (image.width, 0))
        image = wide
    units = active.shape[0]
    cell = max(12, image.width // (2 * units))
    strip = Image.new("RGB", (image.width, cell + 8), "white")
    draw = ImageDraw.Draw(strip)
    left = (image.width - units * cell) // 2
    for unit in range(units):
        box = (left + unit * cell + 1, 4, left + (unit + 1) * cell - 1, cell + 3)
        draw.rectangle(box, fill="black" if active[unit] else "white", outline="grey")
    draw.text((4, 4), str(step), fill="black")
    combined = Image.new("RGB", (image.width, image.height + strip.height), "white")
    combined.paste(image, (0, 0))
    combined.paste(strip, (0, image.height))
    return combined


def visualize_run(
    target: str | Path,
    out: str | Path | None = None,
    distractors: str | None = None,
    deterministic: bool = False,
    seed: int = 12_345,
    max_steps: int = 1000,
) -> dict[str, Any]:
    """Save one episode as ``episode.gif`` (frames with the active units below) and, for a RIMs core,
    ``activations.png`` (units x steps, dark = active) in ``out`` (default: ``RUN/visualize``). For a RIMs
    core reading an input set, also each unit's input attention over the view: beside every GIF frame, and
    in ``attention.png`` for a few steps of the episode."""
    run_dir, config = load_run(target)
    if distractors is not None:
        config = with_distractors(config, distractors)
    out = Path(out) if out is not None else run_dir / "visualize"
    check_writable(out)  # before the episode is played
    env = render_env(config, seed)
    try:
        model = load_model(run_dir, config, env, "cpu", seed)
        policy, core = model.policy, model.policy.lstm_actor
        # Which units the actor's core activates on each step (and where they look), for a RIMs core; with a
        # MiniGrid view, also the agent's point of view, the frame the attention maps are laid out like.
        point_of_view = getattr(env.envs[0].unwrapped, "get_pov_render", None) if hasattr(env, "envs") else None

        def on_step(obs, state, start):
            active, attention = _step_details(policy, core, obs, state, start)
            return active, attention, None if point_of_view is None else point_of_view(tile_size=16)

        if not isinstance(core, RIMs):
            on_step = None
        episode = play_episode(model, env, deterministic, max_steps, on_step)
        extractor = policy.features_extractor if policy.share_features_extractor else policy.pi_features_extractor
    finally:
        env.close()
    if not episode["frames"]:
        raise ConfigError("the environment produced no frames to record")
    per_step = episode["per_step"]
    active = np.array([units for units, _, _ in per_step], dtype=bool) if per_step else None
    grids = None
    if per_step and per_step[0][1] is not None:  # attention (steps, K, N + 1): the view's rows, null row dropped
        attention = np.stack([rows for _, rows, _ in per_step])
        grids = extractor.as_grid(torch.as_tensor(attention[..., 1:])).numpy()
        views = [frame if pov is None else pov for (_, _, pov), frame in zip(per_step, episode["frames"], strict=False)]
    images = [
        _annotated(f, None if active is None else active[i], i, None if grids is None else grids[i])
        for i, f in enumerate(episode["frames"])
    ]
    gif = out / "episode.gif"
    images[0].save(gif, save_all=True, append_images=images[1:], duration=250, loop=0)
    result = {"gif": str(gif), "steps": len(episode["actions"]), "return": float(sum(episode["rewards"]))}
    if active is not None:
        png = out / "activations.png"
        _raster(active, png, f"{config.env.id}: active units per step (return {result['return']:.2f})")
        result["png"] = str(png)
        result["active_per_step"] = float(active.sum(1).mean())
    if grids is not None:
        png = out / "attention.png"
        _attention_figure(views, active, attention, grids, png, f"{config.env.id}, {run_dir.name}")
        result["attention_png"] = str(png)
    return result


def _attention_figure(
    frames: list[np.ndarray], active: np.ndarray, attention: np.ndarray, grids: np.ndarray, path: Path, title: str
) -> None:
    """Up to six steps of the episode, one per row: the view (the agent's point of view where the env draws
    one), then each unit's input attention over it (heads averaged, one colour scale for the whole figure)
    titled with the unit, whether it was active, its attention on the null row and on the rows off the grid
    (a mission)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, units = active.shape
    chosen = sorted(set(np.linspace(0, steps - 1, min(6, steps)).round().astype(int).tolist()))
    fig, axes = plt.subplots(len(chosen), units + 1, figsize=(1.7 * (units + 1), 1.9 * len(chosen)), squeeze=False)
    on_grid = grids.shape[-1] * grids.shape[-2]
    top = float(grids[chosen].max())
    for row, step in enumerate(chosen):
        axes[row, 0].imshow(frames[step])
        axes[row, 0].set_title(f"step {step}", fontsize=8)
        for unit in range(units):
            ax = axes[row, unit + 1]
            ax.imshow(grids[step, unit], cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
            off_grid = attention[step, unit, 1 + on_grid :].sum()
            text = f"u{unit} {'ACTIVE' if active[step, unit] else 'idle'}\nnull {attention[step, unit, 0]:.2f}"
            if attention.shape[-1] > 1 + on_grid:
                text += f" mission {off_grid:.2f}"
            ax.set_title(text, fontsize=7, color="red" if active[step, unit] else "black")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title}: each unit's input attention on the view (colour scale 0 to {top:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""One episode of a trained agent as frames, with its RIMs activation pattern per step (paper Fig. 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rims_rl.agents.config import ConfigError
from rims_rl.agents.evaluate import load_model, load_run, play_episode, render_env, with_distractors
from rims_rl.rims import RIMs

__all__ = ["visualize_run"]


@torch.no_grad()
def _active_units(policy, core: RIMs, obs, state, start) -> np.ndarray:
    """The units the actor's core activates on this step: the same call ``predict`` makes, with details."""
    obs_tensor, _ = policy.obs_to_tensor(obs)
    features = policy.extract_features(obs_tensor)
    if not policy.share_features_extractor:
        features = features[0]
    if state is None:
        hidden = core.initial_state(1, features.device, features.dtype)
    else:
        hidden = tuple(torch.as_tensor(s, device=features.device, dtype=features.dtype) for s in state)
    starts = torch.as_tensor(start, dtype=features.dtype, device=features.device).reshape(1, 1)
    _, _, details = core.forward_with_details(features.unsqueeze(0), hidden, starts)
    return details.active[0, 0].cpu().numpy()


def _raster(active: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, units = active.shape
    fig, ax = plt.subplots(figsize=(max(4.0, steps * 0.18), 0.4 * units + 1.2))
    ax.imshow(active.T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("step")
    ax.set_ylabel("unit")
    ax.set_yticks(range(units))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _annotated(frame: np.ndarray, active: np.ndarray | None, step: int):
    """The frame with a strip below it: one square per unit, dark when active."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    if active is None:
        return image
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
    ``activations.png`` (units x steps, dark = active) in ``out`` (default: ``RUN/visualize``)."""
    run_dir, config = load_run(target)
    if distractors is not None:
        config = with_distractors(config, distractors)
    out = Path(out) if out is not None else run_dir / "visualize"
    env = render_env(config, seed)
    try:
        model = load_model(run_dir, config, env, "cpu", seed)
        policy, core = model.policy, model.policy.lstm_actor
        # Which units the actor's core activates on each step, for a RIMs core.
        on_step = (
            (lambda obs, state, start: _active_units(policy, core, obs, state, start))
            if isinstance(core, RIMs)
            else None
        )
        episode = play_episode(model, env, deterministic, max_steps, on_step)
    finally:
        env.close()
    if not episode["frames"]:
        raise ConfigError("the environment produced no frames to record")
    out.mkdir(parents=True, exist_ok=True)
    active = np.array(episode["per_step"], dtype=bool) if episode["per_step"] else None
    images = [_annotated(f, None if active is None else active[i], i) for i, f in enumerate(episode["frames"])]
    gif = out / "episode.gif"
    images[0].save(gif, save_all=True, append_images=images[1:], duration=250, loop=0)
    result = {"gif": str(gif), "steps": len(episode["actions"]), "return": float(sum(episode["rewards"]))}
    if active is not None:
        png = out / "activations.png"
        _raster(active, png, f"{config.env.id}: active units per step (return {result['return']:.2f})")
        result["png"] = str(png)
        result["active_per_step"] = float(active.sum(1).mean())
    return result

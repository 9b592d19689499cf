"""Features extractors for our policies beyond SB3's own (``NatureCNN``, ``FlattenExtractor``, ...)."""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = ["MiniGridExtractor"]

# MiniGrid's cell codes: object (0-10), colour (0-5), state (0-2).
_CODE_SIZES = (11, 6, 3)


class MiniGridExtractor(BaseFeaturesExtractor):
    """A small CNN over MiniGrid's egocentric cell codes plus an embedding of the mission's words.

    Expects ``{"image": V * V * 3 cell codes (a flattened (V, V, 3) grid), "mission": (L,) word ids}``
    (``rims_rl.envs.minigrid.MissionIds``). Each cell's three codes are embedded and summed (a code
    is a category, not an intensity, so it is not fed as a number), then three 2x2 convolutions with
    a max-pool (the layout of the BabyAI baselines) give the image features. The mission's word
    embeddings are concatenated in order (missions are short), so "red ball" and "ball red" differ.
    NatureCNN cannot take a 7x7 view.

    Args:
        observation_space: the Dict space above.
        cell_embedding: size of a cell's code embedding.
        word_embedding: size of a word's embedding.
        mission_features: width of the mission part of the features.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        cell_embedding: int = 16,
        word_embedding: int = 32,
        mission_features: int = 64,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict) or {"image", "mission"} - set(observation_space.spaces):
            raise ValueError("MiniGridExtractor needs a Dict observation with 'image' and 'mission' (MissionIds)")
        image, mission = observation_space["image"], observation_space["mission"]
        view = round((image.shape[0] / 3) ** 0.5) if len(image.shape) == 1 else 0
        if view < 3 or view * view * 3 != image.shape[0]:
            raise ValueError(f"image must be a flattened (view, view, 3) grid of cell codes, got shape {image.shape}")
        vocabulary, length = int(mission.high.max()) + 1, mission.shape[0]
        with torch.no_grad():
            conv = self._conv(cell_embedding)
            image_features = conv(torch.zeros(1, cell_embedding, view, view)).shape[1]
        super().__init__(observation_space, image_features + mission_features)
        self.view = view
        self.conv = conv
        self.cells = nn.Embedding(sum(_CODE_SIZES), cell_embedding)
        self.register_buffer("offsets", torch.tensor([0, _CODE_SIZES[0], _CODE_SIZES[0] + _CODE_SIZES[1]]))
        self.words = nn.Embedding(vocabulary, word_embedding, padding_idx=0)
        self.mission = nn.Sequential(nn.Linear(length * word_embedding, mission_features), nn.ReLU())

    @staticmethod
    def _conv(channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, 16, 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 2),
            nn.ReLU(),
            nn.Flatten(),
        )

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        codes = observations["image"].long().clamp(min=0).view(-1, self.view, self.view, 3)
        codes = torch.minimum(codes, codes.new_tensor(_CODE_SIZES) - 1) + self.offsets
        cells = self.cells(codes).sum(-2).permute(0, 3, 1, 2)  # (B, embedding, V, V)
        words = self.words(observations["mission"].long()).flatten(1)
        return torch.cat([self.conv(cells), self.mission(words)], dim=1)

"""Features extractors for our policies beyond SB3's own (``NatureCNN``, ``FlattenExtractor``, ...).

Two kinds:

- *vector* extractors give one feature vector per observation (:class:`MiniGridExtractor`, SB3's own);
- *set* extractors (:class:`SetExtractor`: :class:`MiniGridSetExtractor`, :class:`ImageSetExtractor`) give
  ``set_size`` rows of ``row_size`` numbers per observation, one row per thing the agent sees (a cell of
  the view, a position of the CNN's last feature map, the mission), so that each RIMs unit can choose
  which rows it reads. SB3 passes features around as ``(batch, features_dim)``: a set travels flattened,
  row after row (``features_dim = set_size * row_size``); a RIMs policy restores the rows, an LSTM policy
  reads the flat vector (every row, in a fixed order).
"""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from torch import nn

__all__ = ["ImageSetExtractor", "MiniGridExtractor", "MiniGridSetExtractor", "SetExtractor", "set_extractor_for"]

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
        view, vocabulary, length = _minigrid_sizes(type(self).__name__, observation_space)
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
        cells = _embed_cells(self.cells, self.offsets, observations["image"], self.view).permute(0, 3, 1, 2)
        words = self.words(observations["mission"].long()).flatten(1)
        return torch.cat([self.conv(cells), self.mission(words)], dim=1)


def _minigrid_sizes(name: str, observation_space: spaces.Space) -> tuple[int, int, int]:
    """The view side, vocabulary size and mission length of a :class:`rims_rl.envs.minigrid.MissionIds`
    observation space (``ValueError`` for any other space)."""
    if not isinstance(observation_space, spaces.Dict) or {"image", "mission"} - set(observation_space.spaces):
        raise ValueError(f"{name} needs a Dict observation with 'image' and 'mission' (MissionIds)")
    image, mission = observation_space["image"], observation_space["mission"]
    view = round((image.shape[0] / 3) ** 0.5) if len(image.shape) == 1 else 0
    if view < 3 or view * view * 3 != image.shape[0]:
        raise ValueError(f"image must be a flattened (view, view, 3) grid of cell codes, got shape {image.shape}")
    return view, int(mission.high.max()) + 1, mission.shape[0]


def _embed_cells(embedding: nn.Embedding, offsets: torch.Tensor, image: torch.Tensor, view: int) -> torch.Tensor:
    """Each cell's three codes embedded and summed: ``(B, V, V, embedding)``. A code is a category, not an
    intensity; codes out of range are clamped into it."""
    codes = image.long().clamp(min=0).view(-1, view, view, 3)
    codes = torch.minimum(codes, codes.new_tensor(_CODE_SIZES) - 1) + offsets
    return embedding(codes).sum(-2)


class SetExtractor(BaseFeaturesExtractor):
    """A features extractor whose output is a set of ``set_size`` rows of ``row_size`` numbers, flattened
    row after row (``features_dim = set_size * row_size``), so that it travels through SB3 like any
    features. ``rows(features)`` gives them back as ``(..., set_size, row_size)``."""

    def __init__(self, observation_space: spaces.Space, set_size: int, row_size: int) -> None:
        super().__init__(observation_space, set_size * row_size)
        self.set_size, self.row_size = set_size, row_size

    #: (height, width) of the rows that lie on a grid (a view's cells, a feature map's positions), the first
    #: ``height * width`` rows; the rows after them (a mission) lie on no grid.
    grid_shape: tuple[int, int] = (0, 0)

    def rows(self, features: torch.Tensor) -> torch.Tensor:
        return features.unflatten(-1, (self.set_size, self.row_size))

    def as_grid(self, per_row: torch.Tensor) -> torch.Tensor:
        """A value per row ``(..., set_size)`` laid out as an image of the grid rows ``(..., height, width)``
        (row 0 at the top), for plots of where attention falls."""
        height, width = self.grid_shape
        return per_row[..., : height * width].unflatten(-1, (height, width))


class MiniGridSetExtractor(SetExtractor):
    """MiniGrid's observation as a set: one row per cell of the egocentric view and one for the mission.

    A cell's row is its three codes embedded and summed, plus a learned embedding of its position in the
    view, through a shared linear layer and ReLU: the row says what is there and where, and nothing about
    the other cells (no convolution mixes them), so a unit that reads a cell reads that object. The mission
    row is the mission's word embeddings, concatenated in order, through a linear layer and ReLU. ``V * V
    + 1`` rows (50 for MiniGrid's 7x7 view).

    Args:
        observation_space: ``{"image", "mission"}`` as for :class:`MiniGridExtractor`.
        row_size: width of every row.
        word_embedding: size of a word's embedding.
    """

    def __init__(self, observation_space: spaces.Dict, row_size: int = 32, word_embedding: int = 32) -> None:
        view, vocabulary, length = _minigrid_sizes(type(self).__name__, observation_space)
        super().__init__(observation_space, view * view + 1, row_size)
        self.view = view
        self.grid_shape = (view, view)
        self.cells = nn.Embedding(sum(_CODE_SIZES), row_size)
        self.register_buffer("offsets", torch.tensor([0, _CODE_SIZES[0], _CODE_SIZES[0] + _CODE_SIZES[1]]))
        self.positions = nn.Parameter(torch.randn(view * view, row_size) * 0.1)
        self.cell_rows = nn.Sequential(nn.Linear(row_size, row_size), nn.ReLU())
        self.words = nn.Embedding(vocabulary, word_embedding, padding_idx=0)
        self.mission = nn.Sequential(nn.Linear(length * word_embedding, row_size), nn.ReLU())

    def as_grid(self, per_row: torch.Tensor) -> torch.Tensor:
        # MiniGrid's image is indexed (x, y), so row x * V + y; an image is (y, x): the agent at the bottom
        # centre, facing up, as MiniGrid draws its point of view.
        return super().as_grid(per_row).transpose(-1, -2)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        cells = _embed_cells(self.cells, self.offsets, observations["image"], self.view).flatten(1, 2)
        cells = self.cell_rows(cells + self.positions)  # (B, V * V, row_size)
        mission = self.mission(self.words(observations["mission"].long()).flatten(1))
        return torch.cat([cells, mission.unsqueeze(1)], dim=1).flatten(1)


class ImageSetExtractor(SetExtractor):
    """NatureCNN's convolutions without its last linear layer: one row per position of the last feature
    map, its channels followed by the position's (x, y) in [-1, 1]. For Atari's 84x84 frames, 49 rows of
    64 + 2 numbers. The coordinates let a unit's attention depend on where a feature is, which the
    channels alone do not say.

    Args:
        observation_space: an image space NatureCNN takes.
        normalized_image: as NatureCNN's.
    """

    def __init__(self, observation_space: spaces.Box, normalized_image: bool = False) -> None:
        cnn = NatureCNN(observation_space, normalized_image=normalized_image).cnn[:-1]  # drop the Flatten
        with torch.no_grad():
            channels, height, width = cnn(torch.zeros(1, *observation_space.shape)).shape[1:]
        super().__init__(observation_space, height * width, channels + 2)
        self.grid_shape = (height, width)
        self.cnn = cnn
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("coordinates", torch.stack([xs, ys], dim=-1).view(1, height * width, 2))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        maps = self.cnn(observations)  # (B, C, H, W)
        rows = maps.flatten(2).transpose(1, 2)  # (B, H * W, C), position-major
        coordinates = self.coordinates.expand(rows.shape[0], -1, -1)
        return torch.cat([rows, coordinates], dim=-1).flatten(1)


# Extractors that features="set" may replace: the ones a policy picks without being asked, and ours.
_REPLACEABLE = (NatureCNN, MiniGridExtractor, FlattenExtractor, CombinedExtractor)


def set_extractor_for(extractor_class: type, observation_space: spaces.Space) -> type[SetExtractor]:
    """The set extractor that ``features="set"`` puts in place of ``extractor_class`` (itself if it is one):
    :class:`ImageSetExtractor` for images, :class:`MiniGridSetExtractor` for MiniGrid's ``{image, mission}``.
    ``ValueError`` for observations that give no rows, and for an extractor of the user's own (a set
    would silently replace it)."""
    if isinstance(extractor_class, type) and issubclass(extractor_class, SetExtractor):
        return extractor_class
    name = getattr(extractor_class, "__name__", repr(extractor_class))
    if not (isinstance(extractor_class, type) and issubclass(extractor_class, _REPLACEABLE)):
        raise ValueError(
            f"features='set' would replace the features extractor {name}: give a SetExtractor subclass instead"
        )
    if is_image_space(observation_space, check_channels=False):
        return ImageSetExtractor
    try:
        _minigrid_sizes(name, observation_space)
    except ValueError:
        raise ValueError(
            "features='set' needs observations that give rows (images, or MiniGrid's {image, mission} of "
            f"rims_rl.envs.minigrid.MissionIds), got {observation_space}"
        ) from None
    return MiniGridSetExtractor

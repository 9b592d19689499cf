"""Atari game names: the 57 of the standard benchmark, and any ALE game named in any common form.

Light on purpose (gymnasium and ale-py, no SB3 or torch): run folders are named and reports grouped by
:func:`atari_game`'s names, and reading them needs no policy code.
"""

from __future__ import annotations

import difflib
import functools
import re

import gymnasium as gym

__all__ = ["ATARI_57", "atari_game"]

# The 57 games of the standard Atari benchmark (Mnih et al. 2015; Badia et al. 2020).
ATARI_57 = [
    "Alien",
    "Amidar",
    "Assault",
    "Asterix",
    "Asteroids",
    "Atlantis",
    "BankHeist",
    "BattleZone",
    "BeamRider",
    "Berzerk",
    "Bowling",
    "Boxing",
    "Breakout",
    "Centipede",
    "ChopperCommand",
    "CrazyClimber",
    "Defender",
    "DemonAttack",
    "DoubleDunk",
    "Enduro",
    "FishingDerby",
    "Freeway",
    "Frostbite",
    "Gopher",
    "Gravitar",
    "Hero",
    "IceHockey",
    "Jamesbond",
    "Kangaroo",
    "Krull",
    "KungFuMaster",
    "MontezumaRevenge",
    "MsPacman",
    "NameThisGame",
    "Phoenix",
    "Pitfall",
    "Pong",
    "PrivateEye",
    "Qbert",
    "Riverraid",
    "RoadRunner",
    "Robotank",
    "Seaquest",
    "Skiing",
    "Solaris",
    "SpaceInvaders",
    "StarGunner",
    "Surround",
    "Tennis",
    "TimePilot",
    "Tutankham",
    "UpNDown",
    "Venture",
    "VideoPinball",
    "WizardOfWor",
    "YarsRevenge",
    "Zaxxon",
]


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.cache
def _games() -> dict[str, tuple[str, str]]:
    """Normalised name -> (gymnasium-style name such as "SpaceInvaders", ROM id "space_invaders")."""
    import ale_py
    from ale_py.roms import get_all_rom_ids

    gym.register_envs(ale_py)
    names = {}
    for env_id in gym.registry:
        match = re.fullmatch(r"ALE/(\w+)-v5", env_id)
        if match:
            names[_key(match.group(1))] = match.group(1)
    return {_key(rom): (names.get(_key(rom), rom), rom) for rom in get_all_rom_ids()}


def atari_game(name: str) -> tuple[str, str]:
    """Resolve a game given in any common form to ``(name, rom_id)``, e.g. ``("Pong", "pong")``.

    Accepts "Pong", "pong", "ALE/Pong-v5", "PongNoFrameskip-v4", "Pong-v4", "space_invaders".
    Raises ``ValueError`` naming the closest games for an unknown name.
    """
    base = re.sub(r"^ALE/", "", name.strip())
    base = re.sub(r"-v\d+$", "", base)
    base = re.sub(r"(NoFrameskip|Deterministic)$", "", base)
    games = _games()
    found = games.get(_key(base))
    if found is None:
        close = difflib.get_close_matches(_key(base), list(games), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(games[c][0] for c in close)}?" if close else ""
        raise ValueError(f"unknown Atari game {name!r}{hint} ({len(games)} ALE games are available)")
    return found

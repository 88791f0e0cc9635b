"""The TAESD family of tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2) loaded from raw encoder/decoder pairs.

The layout follows the state dicts those weights ship as (`nn.Sequential` indices): 64 channels throughout, 8x
down/up-sampling, a latent width read from the weights, and TAEF2's residual group-norm "pool" branch on the blocks
whose keys carry it. diffusers' `AutoencoderTiny` covers the layout without that branch only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WIDTH = 64
# Positions (in the nn.Sequential) of the Blocks, the stride-2 convs and the upsampling stages.
ENCODER_DOWN = (2, 6, 10)
ENCODER_OUT = 14
DECODER_UPSAMPLE = (6, 11, 16)
DECODER_OUT = 19


def _conv3(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, padding=1, **kwargs)


class TanhClamp(nn.Module):
    """Soft clamp of the latent to (-3, 3), as the decoders were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x / 3.0)


class Block(nn.Module):
    """Residual block of three 3x3 convs; with `pool`, first adds a 1x1 -> GroupNorm -> 1x1 branch (TAEF2)."""

    def __init__(self, channels: int = WIDTH, *, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3(channels, channels), nn.ReLU(), _conv3(channels, channels), nn.ReLU(), _conv3(channels, channels)
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pool:
            wide = 4 * channels
            self.pool = nn.Sequential(
                nn.Conv2d(channels, wide, 1, bias=False),
                nn.GroupNorm(4, wide),
                nn.ReLU(),
                nn.Conv2d(wide, channels, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(latent_channels: int, pool_blocks: frozenset[int] = frozenset()) -> nn.Sequential:
    """Image in [0, 1] -> latent at 1/8 resolution; `pool_blocks` are the Sequential indices with a pool branch."""
    layers: list[nn.Module] = [_conv3(3, WIDTH)]
    for i in range(1, ENCODER_OUT):
        if i in ENCODER_DOWN:
            layers.append(_conv3(WIDTH, WIDTH, stride=2, bias=False))
        else:
            layers.append(Block(pool=i in pool_blocks))
    layers.append(_conv3(WIDTH, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(latent_channels: int, pool_blocks: frozenset[int] = frozenset()) -> nn.Sequential:
    """Latent -> image (unclamped, about [0, 1]); `pool_blocks` as in `build_encoder`."""
    layers: list[nn.Module] = [TanhClamp(), _conv3(latent_channels, WIDTH), nn.ReLU()]
    for i in range(3, DECODER_OUT):
        if i in DECODER_UPSAMPLE:
            layers.append(nn.Upsample(scale_factor=2))
        elif i - 1 in DECODER_UPSAMPLE:
            layers.append(_conv3(WIDTH, WIDTH, bias=False))
        else:
            layers.append(Block(pool=i in pool_blocks))
    layers.append(_conv3(WIDTH, 3))
    return nn.Sequential(*layers)


def _pool_blocks(state: dict[str, torch.Tensor]) -> frozenset[int]:
    return frozenset(int(k.split(".")[0]) for k in state if k.split(".")[1:2] == ["pool"])


class TinyAutoencoder(nn.Module):
    """A TAESD-family encoder/decoder pair. `forward(x)` reconstructs images in [0, 1]."""

    downscale = 8

    def __init__(self, latent_channels: int = 4, *, encoder_pool=frozenset(), decoder_pool=frozenset()) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.encoder = build_encoder(latent_channels, frozenset(encoder_pool))
        self.decoder = build_decoder(latent_channels, frozenset(decoder_pool))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @classmethod
    def from_state_dicts(cls, encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor]) -> TinyAutoencoder:
        """Build the layout the two state dicts describe (latent width, pool branches) and load them strictly."""
        try:
            latent = int(encoder[f"{ENCODER_OUT}.weight"].shape[0])
            if int(decoder["1.weight"].shape[1]) != latent:
                raise ValueError(f"encoder latent width {latent} != decoder's {int(decoder['1.weight'].shape[1])}")
        except KeyError as err:
            raise ValueError(f"not a TAESD-family state dict (missing {err}); expected nn.Sequential keys") from None
        model = cls(latent, encoder_pool=_pool_blocks(encoder), decoder_pool=_pool_blocks(decoder))
        try:
            model.encoder.load_state_dict({k: v.float() for k, v in encoder.items()})
            model.decoder.load_state_dict({k: v.float() for k, v in decoder.items()})
        except RuntimeError as err:
            raise ValueError(f"TAESD-family weights do not fit the 8x, 64-channel layout: {err}") from None
        return model.eval()


def find_pair(folder: str | Path, name: str | None = None) -> tuple[str, Path, Path]:
    """Find `NAME_encoder.pth` + `NAME_decoder.pth` in `folder`; returns (NAME, encoder path, decoder path)."""
    folder = Path(folder)
    names = sorted(p.name[: -len("_encoder.pth")] for p in folder.glob("*_encoder.pth"))
    names = [n for n in names if (folder / f"{n}_decoder.pth").is_file()]
    if name is not None and name in names:
        names = [name]
    if len(names) != 1:
        found = names or "none"
        raise ValueError(
            f"{folder}: expected exactly one NAME_encoder.pth + NAME_decoder.pth pair, found {found}; "
            "pass --weights DIR --name NAME to pick one"
        )
    return names[0], folder / f"{names[0]}_encoder.pth", folder / f"{names[0]}_decoder.pth"


def load_pair(folder: str | Path, name: str | None = None) -> tuple[str, TinyAutoencoder]:
    """Load a TAESD-family pair from `folder` with `torch.load(weights_only=True)`; returns (NAME, model)."""
    name, enc_path, dec_path = find_pair(folder, name)
    return name, TinyAutoencoder.from_state_dicts(_state_dict(enc_path), _state_dict(dec_path))


def _state_dict(path: Path) -> dict:
    """A weights-only `torch.load` of a state dict; anything else (code in a pickle, a damaged file) is refused."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # UnpicklingError for pickled code, RuntimeError/EOFError for damaged files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{path}: not a weights-only state dict ({type(err).__name__}: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds {type(state).__name__}, expected a state dict of tensors")
    return state

"""The Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"), DiT-adaLN-Zero.

The image is cut into p x p patches (a convolution with stride p), each patch a token of width
``hidden`` with a fixed 2D sin-cos position; ``depth`` transformer blocks are conditioned on
c = embed(t) + embed(y) through adaLN-Zero: each block regresses a shift, a scale and a gate for its
attention and its MLP from c, and the gates start at zero, so every block starts as the identity. The
final layer (adaLN, then a zero-initialized linear map to p * p * C values per token) makes the
network's output exactly zero at initialization. As in the UNet, the class table has one extra "null"
row, index ``num_classes``, which classifier-free guidance uses as "no label".

Parameters, with h = hidden, d = depth, C = in_channels, p = patch_size, K = num_classes (tests/test_dit.py
checks this count):
  patch embedding C p^2 h + h; timestep MLP (256 -> h -> h) 256 h + h + h^2 + h; class table (K + 1) h;
  per block: attention 4 h^2 + 4 h, MLP (ratio 4) 8 h^2 + 5 h, adaLN modulation 6 h (h + 1);
  final layer: adaLN 2 h (h + 1), linear h p^2 C + p^2 C. The positional embedding is a buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import timestep_embedding

FREQUENCY_DIM = 256  # DiT's TimestepEmbedder: sinusoids of 256 frequencies, then an MLP to the width
MLP_RATIO = 4


def check_shape(image_size: int, patch_size: int, hidden: int, heads: int) -> None:
    """Raise ValueError, naming the field, for a DiT that cannot be built."""
    if image_size % patch_size:
        raise ValueError(f"patch_size: {patch_size} does not divide the {image_size}x{image_size} images")
    if hidden % heads:
        raise ValueError(f"hidden: {hidden} is not divisible by heads = {heads}")
    if hidden % 4:
        raise ValueError(f"hidden: {hidden} is not a multiple of 4, which the 2D sin-cos positional embedding needs")


def sincos_2d(grid: int, dim: int) -> Tensor:
    """Fixed positions of a grid x grid of tokens in row-major order: (grid^2, dim).

    As MAE's and DiT's ``get_2d_sincos_pos_embed``: the first half of the channels encodes the column,
    the second the row, each as [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (dim / 4)).
    """
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    row, col = pos.repeat_interleave(grid), pos.repeat(grid)  # token i*grid + j sits at row i, column j

    def axis(p: Tensor) -> Tensor:
        angles = p[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([axis(col), axis(row)], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # x (B, N, h), shift and scale (B, h)


class Block(nn.Module):
    """A transformer block with adaLN-Zero: (shift, scale, gate) for attention and for the MLP from c."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)  # adaLN supplies the affine
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, MLP_RATIO * hidden), nn.GELU(approximate="tanh"), nn.Linear(MLP_RATIO * hidden, hidden)
        )
        self.dropout = nn.Dropout(dropout)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def modulation(self, c: Tensor) -> Tensor:
        """c (B, h) -> (B, 6 h): shift, scale, gate of the attention, then of the MLP."""
        return self.adaLN(c)

    def attention(self, x: Tensor) -> Tensor:
        B, N, H = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, H))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:  # x (B, N, h), c (B, h)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.dropout(self.attention(modulate(self.norm1(x), shift1, scale1)))
        return x + gate2[:, None] * self.dropout(self.mlp(modulate(self.norm2(x), shift2, scale2)))


class DiT(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        patch_size: int = 2,
        depth: int = 4,
        hidden: int = 64,
        heads: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        check_shape(image_size, patch_size, hidden, heads)
        self.in_channels, self.patch_size, self.num_classes = in_channels, patch_size, num_classes
        self.grid = image_size // patch_size
        self.patchify = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_2d(self.grid, hidden)[None], persistent=False)  # (1, N, h), fixed
        self.time_mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        # One extra row: index num_classes is the null label used for classifier-free guidance.
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.null_label = num_classes
        self.blocks = nn.ModuleList(Block(hidden, heads, dropout) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, patch_size * patch_size * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT's initialization: Xavier-uniform linear maps (the patch convolution as one), N(0, 0.02)
        # embeddings, and zeros for every adaLN regression and the final linear map (adaLN-Zero).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.out_channels, -1))
        nn.init.zeros_(self.patchify.bias)
        for m in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(m.weight, std=0.02)
        if self.class_emb is not None:
            nn.init.normal_(self.class_emb.weight, std=0.02)
        for linear in [*(b.adaLN[1] for b in self.blocks), self.final_adaLN[1], self.final]:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, t: Tensor, y: Tensor | None) -> Tensor:
        """c = embed(t) + embed(y): (B,) -> (B, h); a conditional model given no label gets the null label."""
        c = self.time_mlp(timestep_embedding(t, FREQUENCY_DIM))
        if self.class_emb is not None:
            if y is None:
                y = torch.full_like(t, self.null_label)
            c = c + self.class_emb(y)
        return c

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, p * p * C) -> (B, C, H, W): token i * grid + j fills rows p i .. p i + p - 1, columns p j .. ."""
        B, g, p, C = x.shape[0], self.grid, self.patch_size, self.in_channels
        return x.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x_t (B, C, H, W), t long (B,) in [0, T), y long (B,) or None -> network output (B, C, H, W)."""
        c = self.embed(t, y)  # (B, h)
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, h), N = (H / p) (W / p)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_adaLN(c).chunk(2, dim=1)
        return self.unpatchify(self.final(modulate(self.final_norm(h), shift, scale)))

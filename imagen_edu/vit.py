"""A Vision Transformer image tower for CLIP (chapter 4).

Following Dosovitskiy et al. (2021), "An Image is Worth 16x16 Words" (Section 3.1, Eq. 1-4), and
the ViT image tower of CLIP (Radford et al. 2021, Section 2.4):

* **patch embedding**: the ``(R, R)`` image is cut into ``N = (R / P)^2`` non-overlapping ``P x P``
  patches, each flattened and mapped linearly to ``width`` dimensions. A linear map of a flattened
  patch is exactly a convolution with kernel ``P`` and stride ``P``, so that is how it is computed
  (:class:`PatchEmbedding`); the patches are read row by row (raster order);
* a learned **class token** ``x_class`` is put in front of the ``N`` patch tokens (Eq. 1 of ViT);
* learned **position embeddings**, one per token (``N + 1`` of them), are added: attention itself
  is blind to order, so without them the patches are a *set* (Eq. 1);
* **pre-norm Transformer blocks**, chapter 1's :class:`~imagen_edu.attention.Transformer`
  (Eq. 2-3 of ViT: ``x = x + MSA(LN(x)); x = x + MLP(LN(x))``) with its final LayerNorm (Eq. 4);
* the class token's **final state** is the image's feature ``(B, width)``: the only token that
  belongs to no patch, it gathers what the image as a whole says. :class:`~imagen_edu.clip.CLIPModel`
  projects it into the joint space with its linear ``image_proj``, as for the CNN tower.

Chapter 4 compares this tower with the CNN of :class:`imagen_edu.clip.ImageEncoder` at the same
budget (``CLIPConfig(image_tower="vit")``).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import LearnedPositions, Transformer

__all__ = ["PatchEmbedding", "VisionTransformer"]


class PatchEmbedding(nn.Module):
    """``(B, C, R, R)`` -> ``(B, N, width)``: the linear embedding of each ``P x P`` patch.

    Eq. (1) of Dosovitskiy et al.: ``x_p^i E`` with ``E`` of shape ``(P^2 C, width)``; as a
    ``Conv2d(C, width, kernel_size=P, stride=P)`` the patches never overlap and each output pixel
    is one patch. ``N = (R / P)^2`` tokens, patch ``(row, col)`` at index ``row * R / P + col``.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, in_channels: int = 3):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, C, R, R)`` -> patch tokens ``(B, N, width)`` in raster order."""
        return rearrange(self.proj(images), "b d h w -> b (h w) d")


class VisionTransformer(nn.Module):
    """Patches, class token, Transformer blocks.

    The ViT image tower: ``(B, 3, R, R)`` in [-1, 1] -> the class token's final state ``(B, width)``.

    ``z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos`` (Eq. 1 of Dosovitskiy et al.), ``n_layers``
    pre-norm blocks of chapter 1 (Eq. 2-3), the final LayerNorm (Eq. 4), read at token 0.

    Args:
        image_size: side ``R`` of the square input.
        patch_size: side ``P`` of a patch; ``R`` must be a multiple of it.
        width: ``d_model`` of the tokens (and of the output).
        n_layers, n_heads, mlp_mult: the Transformer (:class:`~imagen_edu.attention.Transformer`).
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, width: int = 64, n_layers: int = 2,
                 n_heads: int = 4, mlp_mult: int = 4):
        super().__init__()
        self.image_size = image_size
        self.patch_embed = PatchEmbedding(image_size, patch_size, width)
        # the class token starts at zero, as in the ViT reference code (torchvision does the same)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = LearnedPositions(self.patch_embed.num_patches + 1, width)
        self.transformer = Transformer(width, n_heads, n_layers, mlp_mult)

    def tokens(self, images: torch.Tensor, positions: bool = True) -> torch.Tensor:
        """``z_0 (B, N + 1, width)``: the class token then the patch tokens (plus positions if asked)."""
        patches = self.patch_embed(images)                                   # (B, N, width)
        cls = self.class_token.expand(patches.shape[0], -1, -1)              # (B, 1, width)
        z = torch.cat([cls, patches], dim=1)                                 # (B, N + 1, width)
        return self.pos(z) if positions else z

    def forward(self, images: torch.Tensor, positions: bool = True) -> torch.Tensor:
        """``images (B, 3, R, R)`` -> ``(B, width)``, the final state of the class token.

        ``positions=False`` leaves out the position embeddings (for the chapter's experiment: the
        patches become an unordered set and the output no longer depends on their arrangement).
        """
        h = self.transformer(self.tokens(images, positions))                # (B, N + 1, width)
        return h[:, 0]

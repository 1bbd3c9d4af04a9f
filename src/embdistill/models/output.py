"""What every embedding network returns, so losses never depend on a concrete model."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class EmbedderOutput:
    """An embedding batch and the intermediate feature maps that were asked for.

    ``embedding`` is (B, D) and L2-normalised. ``features`` maps a layer name
    (e.g. ``"stage3"``) to its (B, C, H, W) activation; it holds only the layers
    a loss requested, so plain training pays nothing for it.
    """

    embedding: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)

    def float(self) -> EmbedderOutput:
        """In fp32 (after a bf16 autocast forward pass), so that the losses are computed in fp32."""
        return EmbedderOutput(self.embedding.float(), {k: v.float() for k, v in self.features.items()})

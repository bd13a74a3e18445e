"""History buffer of generated images for the discriminator step (Shrivastava et al. 2017, CycleGAN).

The discriminator sees, for each new fake image, with probability 1/2 that image and with
probability 1/2 an older fake from the pool (which the new one then replaces). This damps
oscillations between generator and discriminator. Written by hand (a dozen lines) because no
installed library provides it; it uses its own seeded ``torch.Generator`` and its whole state
(buffer + generator) round-trips through :meth:`state_dict` so that resumed runs are exact.
"""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    """A pool of at most ``size`` images ``[C,H,W]`` (stored detached, on the CPU or the images' device)."""

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(int(seed))

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch ``[B,C,H,W]`` mixing ``images`` (detached) with pooled ones; updates the pool."""
        images = images.detach()
        if self.size <= 0:
            return images
        out = []
        for img in images:
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
                continue
            if torch.rand((), generator=self.generator).item() < 0.5:
                idx = int(torch.randint(len(self.images), (), generator=self.generator).item())
                out.append(self.images[idx].clone())
                self.images[idx] = img.clone()
            else:
                out.append(img)
        return torch.stack(out, 0)

    def state_dict(self) -> dict[str, Any]:
        """Tensors only (``torch.load(weights_only=True)`` safe)."""
        stacked = torch.stack(self.images, 0).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": stacked, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.size = int(state["size"])
        imgs = state["images"]
        self.images = [im.to(device) for im in imgs] if imgs.numel() else []
        self.generator.set_state(state["generator"])

"""The defense contract: images -> images (IBM ART's preprocessor), plus a gradient estimate for attackers.

A defense takes float RGB (N, 3, H, W) in [0, 1] and returns a tensor of the same shape, in [0, 1],
on the input's device. Each image is processed independently and deterministically, so a defended
image is a pure function of (defense config, image content): the evaluation caches defended images by
`cache_key`. The exception is a *group-wise* defense (`groupwise = True`, e.g. `unmask`): a call is one
person's photos and each output depends on the whole group; the evaluation calls it per identity and keys its
cache by the group's content too. An adaptive attacker differentiates through a defense with `gradient_estimate`: the
exact gradient where the defense has one (`exact_forward`), else the straight-through estimate
(BPDA, Athalye et al. 2018: the defense's output forward, the identity backward).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from ..utils.fingerprint import module_fingerprint
from ..utils.images import check_batch_size, check_unit_images

__all__ = ["Defense", "NoDefense", "ModuleDefense", "Composite", "Compose", "check_images", "GRADIENTS"]

GRADIENTS = ("exact", "bpda")


def check_images(images: torch.Tensor, who: str) -> None:
    """Raise ValueError unless `images` is a float (N, 3, H, W) tensor with values in [0, 1]
    (`utils.images.check_unit_images`)."""
    check_unit_images(images, who)


class _StraightThrough(torch.autograd.Function):
    """y = defended forward, dL/dx = dL/dy backward (BPDA with the identity)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, defended: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return defended

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class Defense:
    """Base class. Subclasses set `kind` and implement `_apply(images) -> images`.

    `params` holds every setting (JSON-serialisable); `config` adds the kind (`create_defense(config)`
    rebuilds the defense); `name` is a short, stable label for tables ("jpeg-q75"); `cache_key`
    identifies the exact function (including a checkpoint's content hash where there is one).
    """

    kind: str = ""

    def __init__(self, **params: Any):
        self.params = params

    @property
    def groupwise(self) -> bool:
        """True: a call is one person's photos (`shared.SharedPatternRemoval`), not any batch."""
        return False

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.kind, **self.params}

    @property
    def name(self) -> str:
        return self.kind

    @property
    def fingerprint(self) -> str:
        """Content identity beyond `config` (a checkpoint hash); empty for pure functions."""
        return ""

    @property
    def network(self) -> nn.Module | None:
        """The learned network inside the defense (the purifier), or None for fixed functions."""
        return None

    @property
    def parts(self) -> "list[Defense]":
        """The plain defenses this one is made of, flattened (a composition's steps, a `Views`' views;
        `[self]` for a plain defense)."""
        return [self]

    @property
    def gradient_parts(self) -> "list[Defense]":
        """The plain defenses an attacker's `gradient_estimate` passes through: `parts`, but of a `Views` its last
        view's only (the view it differentiates)."""
        return [self]

    @property
    def key_config(self) -> dict[str, Any]:
        """`config` as `cache_key` holds it: the same, but a setting that says where content lies rather than what it
        is stands for the content (a checkpoint's path: `PuFaceDefense`, whose weights are in `fingerprint`)."""
        return self.config

    @property
    def cache_key(self) -> str:
        return _cache_key(self.key_config, self.fingerprint)

    @property
    def earlier_cache_keys(self) -> list[str]:
        """Keys earlier versions cached this same function's outputs under (by its config as written: a checkpoint's
        path), for a cache lookup that misses `cache_key`; empty where they are the same."""
        old = _cache_key(self.config, self.fingerprint)
        return [old] if old != self.cache_key else []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> same shape, float in [0, 1], on the input's device; no gradient."""
        check_images(images, f"defense {self.name}")
        if len(images) == 0:
            return images.clone()
        with torch.no_grad():
            out = self._apply(images)
        if out.shape != images.shape:
            raise RuntimeError(f"defense {self.name} changed the shape {tuple(images.shape)} -> {tuple(out.shape)}")
        return out.to(device=images.device, dtype=images.dtype).clamp_(0.0, 1.0)

    def _apply(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ for adaptive attacks
    @property
    def has_exact_gradient(self) -> bool:
        return type(self).exact_forward is not Defense.exact_forward

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The defense as a differentiable function of `images` (where it has one)."""
        raise NotImplementedError(f"defense {self.name} has no exact gradient; use gradient='bpda'")

    def gradient_estimate(self, images: torch.Tensor, gradient: str = "exact") -> torch.Tensor:
        """The defended images with a gradient for an attacker: "exact" backpropagates through the defense
        (falls back to BPDA where it has no gradient), "bpda" uses the identity in the backward pass."""
        if gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}; choose one of {', '.join(GRADIENTS)}")
        if gradient == "exact" and self.has_exact_gradient:
            return self.exact_forward(images)
        return _StraightThrough.apply(images, self(images.detach()))

    # ------------------------------------------------------------------ composition
    def then(self, other: "Defense") -> "Compose":
        """This defense followed by `other`."""
        return Compose([self, other])

    def __add__(self, other: "Defense") -> "Compose":
        return self.then(other)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _cache_key(config: dict[str, Any], fingerprint: str) -> str:
    blob = json.dumps({"config": config, "fingerprint": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class NoDefense(Defense):
    """Identity: the images pass unchanged."""

    kind = "none"

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


class ModuleDefense(Defense):
    """Any images -> images `nn.Module` (your own denoiser, a purifier) as a defense: evaluated without
    gradients in batches of `batch_size`, differentiated exactly by an adaptive attacker. `label` names it
    in tables; its weights are part of the cache key."""

    kind = "module"

    def __init__(self, module: nn.Module, label: str = "module", batch_size: int = 32):
        super().__init__(label=label)
        self.module = module.eval()
        self.batch_size = check_batch_size(batch_size, label)  # images per forward pass, >= 1

    @property
    def name(self) -> str:
        return self.params["label"]

    @property
    def network(self) -> nn.Module:
        return self.module

    @property
    def fingerprint(self) -> str:
        return module_fingerprint(self.module)

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        dev = next(self.module.parameters(), images).device
        return torch.cat([self.module(images[i : i + self.batch_size].to(dev)).to(images.device)
                          for i in range(0, len(images), self.batch_size)])

    def exact_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)


class Composite(Defense):
    """A defense made of other defenses (`members`: a composition's steps, `views`' views, `random`'s branches):
    its fingerprint, plain parts and learned networks are its members'."""

    @property
    def members(self) -> "list[Defense]":  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def parts(self) -> "list[Defense]":
        return [p for d in self.members for p in d.parts]

    @property
    def gradient_parts(self) -> "list[Defense]":
        return [p for d in self.members for p in d.gradient_parts]

    @property
    def fingerprint(self) -> str:
        return "|".join(d.fingerprint for d in self.members)

    @property
    def key_config(self) -> dict[str, Any]:
        """`config` with its members' `key_config` in place of their configs."""
        configs, keyed = [d.config for d in self.members], [d.key_config for d in self.members]
        return {k: keyed if v == configs else v for k, v in self.config.items()}

    @property
    def network(self) -> nn.Module | None:
        nets = [n for d in self.members if (n := d.network) is not None]
        return None if not nets else nets[0] if len(nets) == 1 else nn.ModuleList(nets)


class Compose(Composite):
    """Apply `steps` (defenses) in order; nested compositions are flattened."""

    kind = "compose"

    steps: "list[Defense]"

    def __init__(self, steps: "list[Defense]"):
        flat: list[Defense] = []
        for d in steps:
            if not isinstance(d, Defense):
                raise TypeError(f"compose: steps must be defenses, got {d!r} (create_defense builds them from specs)")
            flat.extend(d.steps if isinstance(d, Compose) else [d])
        if not flat:
            raise ValueError("compose: needs at least one step")
        self.steps = flat
        super().__init__(steps=[d.config for d in flat])

    @property
    def members(self) -> "list[Defense]":
        return self.steps

    @property
    def name(self) -> str:
        return "+".join(d.name for d in self.steps)

    @property
    def groupwise(self) -> bool:
        return any(d.groupwise for d in self.steps)

    def _apply(self, images: torch.Tensor) -> torch.Tensor:
        for d in self.steps:
            images = d(images)
        return images

    def gradient_estimate(self, images: torch.Tensor, gradient: str = "exact") -> torch.Tensor:
        """Each step's own estimate in turn ("exact": exact where a step has a gradient, BPDA elsewhere)."""
        if gradient == "bpda":
            return super().gradient_estimate(images, gradient)
        for d in self.steps:
            images = d.gradient_estimate(images, gradient)
        return images

"""What each latent layer controls: vary one layer while all others stay fixed.

For layer l, row r holds one draw ``z^(r) ~ p(z)``; column c replaces layer l alone by a fresh
draw ``z_l^(r,c)`` (the latents as the model parameterises them: for a whitened ladder the noise
``eps_l``, so the layers below follow through their conditionals). Decoding gives the papers'
hierarchy figure. On data with known factors, a classifier reads every factor off the images and

    change(l, f) = mean_r P(two columns of row r disagree on factor f)
                 = mean_r (1 - sum_k p_{r,k}^2),   p_{r,k} = share of columns with level k,

is compared with the same quantity when *all* layers are redrawn (``change(all, f)``); the ratio
says which layer changes which factor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inferkit.devices import module_device
from inferkit.interfaces import Latents, Model


def vary_layer(model: Model, layer: int, num_rows: int, num_columns: int, *,
               generator: torch.Generator | None = None) -> Latents:
    """Latents ``[rows * columns, ...]`` (row-major) with only ``layer`` differing within a row;
    ``layer = -1`` redraws every layer (the reference)."""
    base = model.sample_prior(num_rows, generator=generator)
    fresh = model.sample_prior(num_rows * num_columns, generator=generator)
    out = []
    for index, (fixed, new) in enumerate(zip(base, fresh)):
        if layer == -1 or index == layer:
            out.append(new)
        else:
            out.append(fixed.repeat_interleave(num_columns, dim=0))
    return tuple(out)


@torch.no_grad()
def layer_traversal_images(model: Model, num_rows: int = 6, num_columns: int = 8, *, seed: int = 0) -> list[Tensor]:
    """One image grid ``[rows * columns, C, H, W]`` per latent layer (bottom first)."""
    generator = torch.Generator(device=module_device(model)).manual_seed(seed)
    return [model.decode(vary_layer(model, layer, num_rows, num_columns, generator=generator))
            for layer in range(model.num_layers)]


def disagreement(levels: Tensor, num_rows: int, num_columns: int) -> Tensor:
    """``mean_r (1 - sum_k p_{r,k}^2)`` per column of ``levels`` ``[rows * columns, F]`` (float64)."""
    grouped = levels.view(num_rows, num_columns, -1)
    result = []
    for f in range(grouped.shape[2]):
        values = grouped[:, :, f]
        counts = torch.stack([(values == k).sum(1) for k in range(int(values.max()) + 1)], 1).double()
        shares = counts / num_columns
        result.append((1 - shares.pow(2).sum(1)).mean())
    return torch.stack(result)


@torch.no_grad()
def factor_changes(model: Model, classifier, factor_names: tuple[str, ...], *, num_rows: int = 32,
                   num_columns: int = 8, seed: int = 0) -> dict:
    """``change(l, f)`` for every layer and factor, ``change(all, f)``, their ratio, and the layer
    whose variation changes each factor most (see module docstring)."""
    generator = torch.Generator(device=module_device(model)).manual_seed(seed)

    def rates(layer: int) -> Tensor:
        images = model.decode(vary_layer(model, layer, num_rows, num_columns, generator=generator))
        return disagreement(classifier.predict(images).cpu(), num_rows, num_columns)

    reference = rates(-1)
    per_layer = [rates(layer) for layer in range(model.num_layers)]
    relative = [(r / reference.clamp_min(1e-12)).tolist() for r in per_layer]
    dominant = {name: int(max(range(model.num_layers), key=lambda l, f=f: per_layer[l][f])) + 1
                for f, name in enumerate(factor_names)}
    return {
        "factors": list(factor_names),
        "change_all_layers": dict(zip(factor_names, reference.tolist())),
        "change_by_layer": {f"z{l + 1}": dict(zip(factor_names, r.tolist())) for l, r in enumerate(per_layer)},
        "relative_to_all": {f"z{l + 1}": dict(zip(factor_names, r)) for l, r in enumerate(relative)},
        "dominant_layer": dominant,
        "rows": num_rows, "columns": num_columns,
    }

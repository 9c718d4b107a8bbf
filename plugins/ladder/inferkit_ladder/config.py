"""Configuration of the ``ladder`` model: every option, validated, JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Annotated, Any

from inferkit.errors import UserError
from inferkit.options import Bounds

PARAMETERIZATIONS = ("centered", "whitened")
SIGMA_HEADS = ("log-variance", "softplus")
OUTPUT_BLOCKS = ("residual", "deconv")
MAX_LATENT_DIM = 64
MIN_IMAGE_SIZE = 8  # feature maps of 4 x 4
MAX_IMAGE_SIZE = 256
MAX_NF = 1024
Features = Annotated[int, Bounds(maximum=MAX_NF, why="nf feature maps per layer: the parameters grow as "
                                                    "nf * nf and nf * image_size**2")]


def default_latent_dims(num_layers: int) -> tuple[int, ...]:
    """Bottom-first default dims ``d_l = min(64, 4 * 2**(L - l))``, l = 1..L.

    The top layer has 4 units and each lower layer doubles, capped at 64 (L=3: (16, 8, 4);
    L=5: (64, 32, 16, 8, 4)): small, so the default model trains in minutes on a CPU. The paper's
    Table 4 (L=3, 32 x 32 x 3 images) has (128, 64, 32); the authors' code for L=5 has
    (128, 96, 64, 64, 64) (``args.z_dims``, listed top first there); see ``configs/paper/``.
    """
    return tuple(min(MAX_LATENT_DIM, 4 * 2 ** (num_layers - l)) for l in range(1, num_layers + 1))


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int`` of at least ``minimum``, or a :class:`UserError` naming option ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"ladder: {name} must be an integer, got {value!r}; give e.g. {name}={max(minimum, 1)}")
    value = int(value)
    if value < minimum:
        raise UserError(f"ladder: {name} must be at least {minimum}, got {value}; give {name}>={minimum}")
    return value


def check_positive_float(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` > 0, or a :class:`UserError` naming option ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"ladder: {name} must be a number, got {value!r}; give a positive float")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise UserError(f"ladder: {name} must be a finite number > 0, got {value}; give a positive float")
    return value


def _dims(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):  # "32,16,8" as typed on a command line
        text = value.strip().strip("()[]")
        try:
            value = tuple(int(p) for p in text.replace(" ", ",").split(",") if p)
        except ValueError:
            raise UserError(
                f"ladder: latent_dims {value!r} is not a list of integers; give e.g. latent_dims=32,16,8"
            ) from None
    if not isinstance(value, (tuple, list)):
        raise UserError(f"ladder: latent_dims must be a tuple of integers, got {value!r}; give e.g. (32, 16, 8)")
    return tuple(check_int("latent_dims entry", v, 1) for v in value)


@dataclass(frozen=True)
class LadderConfig:
    """Options of :class:`~inferkit_ladder.LadderModel` (validated on creation).

    The blocks are those of the authors' code (``train_celeba_five_layers.py`` of
    enijkamp/short_run_inf) wherever it and the paper's text (appendix 8.1, Table 4) agree or the
    text is silent; where they differ the code is the default and the text's reading an option.

    * ``num_layers``: L. ``latent_dims``: ``(d_1, ..., d_L)``, bottom first; ``()`` means
      :func:`default_latent_dims` (small) and is replaced by the resolved tuple. Table 4:
      L=3, (128, 64, 32); the code: L=5, (128, 96, 64, 64, 64).
    * ``nf``: feature maps of every ``h_d^(l)`` (Table 4 and the code: 64; default 12, small).
    * ``image_size``, ``channels``: the data's ``[C, S, S]``; the maps are ``S/2`` a side
      (Table 4: 16 for 32 x 32). ``S`` is even, 8 to 256.
    * ``projection_channels``: ``c`` of ``p_l``'s reshape to ``[c, S/2, S/2]`` before its 5x5
      transposed convolution (the code's ``coef`` = 4; the text does not say).
    * ``sigma_head``: ``"log-variance"`` (the code: ``sigma_l = exp(0.5 clamp(softplus(v) + 1e-8,
      0, 10))``; the text only says ``sigma_l^2`` is a diagonal variance) or ``"softplus"``
      (inferkit's ``sigma_l = softplus(v) + min_sigma``; ``min_sigma`` is read only then).
    * ``output_block``: ``"residual"`` (the code: one more ``d`` block before ``o_0``) or
      ``"deconv"`` (the text and Table 4: ``x = tanh(o_0(z_{1,d}))``).
    * ``parameterization``: ``"whitened"`` (the authors': their code infers the noise ``eps_l``
      under ``N(0, I)``) or ``"centered"`` (the latents are the ``z_l``).
    * ``observation_sigma``: sigma of ``p(x | z)`` (the trainer anneals it).
    """

    num_layers: int = 3
    latent_dims: tuple[int, ...] = ()
    nf: int = 12
    image_size: int = 32
    channels: int = 3
    observation_sigma: float = 0.3
    parameterization: str = "whitened"
    min_sigma: float = 1e-2
    projection_channels: int = 4
    sigma_head: str = "log-variance"
    output_block: str = "residual"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "num_layers", check_int("num_layers", self.num_layers, 1))
        dims = _dims(self.latent_dims)
        if not dims:
            dims = default_latent_dims(self.num_layers)
        if len(dims) != self.num_layers:
            raise UserError(
                f"ladder: latent_dims has {len(dims)} entries but num_layers is {self.num_layers}; "
                "give one dimension per layer, bottom first"
            )
        set_(self, "latent_dims", dims)
        set_(self, "nf", check_int("nf", self.nf, 1))
        size = check_int("image_size", self.image_size, 1)
        if size % 2 != 0 or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
            raise UserError(
                f"ladder: image_size {size} is not supported; give an even size between "
                f"{MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} (e.g. 16, 28, 32, 64)"
            )
        set_(self, "image_size", size)
        set_(self, "channels", check_int("channels", self.channels, 1))
        set_(self, "observation_sigma", check_positive_float("observation_sigma", self.observation_sigma))
        if self.parameterization not in PARAMETERIZATIONS:
            raise UserError(
                f"ladder: unknown parameterization {self.parameterization!r}; "
                "give parameterization=centered or parameterization=whitened"
            )
        set_(self, "min_sigma", check_positive_float("min_sigma", self.min_sigma))
        set_(self, "projection_channels", check_int("projection_channels", self.projection_channels, 1))
        for name, choices in (("sigma_head", SIGMA_HEADS), ("output_block", OUTPUT_BLOCKS)):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"ladder: unknown {name} {getattr(self, name)!r}; give "
                    + " or ".join(f"{name}={c}" for c in choices)
                )

    # -- round trip ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every option (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["latent_dims"] = list(self.latent_dims)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LadderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`UserError`."""
        if not isinstance(data, dict):
            raise UserError(f"ladder: a config must be a mapping of options, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise UserError(
                f"ladder: unknown option(s) {', '.join(unknown)}; valid options are {', '.join(names)}"
            )
        data = dict(data)
        if isinstance(data.get("latent_dims"), list):
            data["latent_dims"] = tuple(data["latent_dims"])
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the options as JSON to ``path`` (atomically: temp file then rename)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LadderConfig:
        """Read a config written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise UserError(f"ladder: config file {os.fspath(path)} not found; check the path") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(
                f"ladder: config file {os.fspath(path)} is not valid JSON ({exc}); re-save it with LadderConfig.save"
            ) from None
        return cls.from_dict(data)

"""Any Pyro model as an inferkit :class:`~inferkit.Model`.

A Pyro model function ``model(x)`` takes a batch ``x`` (``[batch, *data_shape]``), draws its latent
sites and its observed site (named ``observed``, default ``"x"``, with ``obs=x``) inside a
``pyro.plate`` over the examples, so dim 0 of every site is the example. Every latent site must be
continuous. inferkit then sees, per example and per latent site ``l``, the **unconstrained** value
``u_l`` (``z_l = T_l(u_l)`` with ``T_l = biject_to(support)``, the transforms Pyro's MCMC uses), and

    log p(x, u) = sum_l [ log p(z_l | ...) + log|det dT_l/du_l| ] + log p(x | z)

which is minus Pyro's potential energy, split per example (examples are independent). Learnable
``pyro.param`` / ``pyro.module`` parameters the function uses become this module's parameters.

Two ways in:

* ``inferkit run --model pyro:my_module:my_model ...`` (the function is imported by name, the data
  shape comes from the data set);
* an entry point in ``inferkit.models`` naming a class made by :func:`pyro_model`::

      MyModel = inferkit.models.pyro_model.pyro_model(my_model)
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to

from inferkit.errors import UserError
from inferkit.interfaces import Latents, Model

PREFIX = "pyro:"


def _per_example(values: Tensor, batch: int) -> Tensor:
    """Sum every dim but the first (the example); a scalar is broadcast to ``[batch]``."""
    if values.dim() == 0:
        return values.expand(batch)
    return values.reshape(values.shape[0], -1).sum(-1)


@contextlib.contextmanager
def _random_state(generator: torch.Generator | None) -> Iterator[None]:
    """Pyro draws from torch's global generator: seed a forked copy of it from ``generator``."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class PyroModel(Model):
    """A Pyro model function behind the :class:`~inferkit.Model` interface.

    Args:
        data_shape: shape of one example (in ``inferkit run`` it comes from the data set).
        observed: name of the observed sample site.
        dtype: ``"float32"`` or ``"float64"``, the dtype of the placeholder data the function is traced on
            when there is no data (prior samples); give the one its tensors use.
    """

    function: Callable[[Tensor], object] | None = None  # bound by :func:`pyro_model`
    source: str = ""

    def __init__(self, data_shape: tuple[int, ...] = (), observed: str = "x", dtype: str = "float32"):
        super().__init__()
        if dtype not in ("float32", "float64"):
            raise UserError(f"pyro model: dtype must be float32 or float64, got {dtype!r}")
        self.dtype = getattr(torch, dtype)
        if self.function is None:
            raise UserError("PyroModel needs a Pyro model function: use pyro_model(fn) or --model pyro:module:function")
        if not data_shape or any(d < 1 for d in data_shape):
            raise UserError(f"pyro model {self.source or self.function.__name__}: data_shape must be the shape of "
                            f"one example, got {tuple(data_shape)}; give --model-opt data_shape=...")
        self.data_shape = tuple(int(d) for d in data_shape)
        self.observed = observed
        trace = self._first_trace()
        if observed not in trace.nodes or trace.nodes[observed]["type"] != "sample":
            raise UserError(f"pyro model {self.source}: it has no sample site named {observed!r}; give the name of "
                            "its observed site with --model-opt observed=...")
        self.site_names: list[str] = []
        self.supports: dict[str, object] = {}  # the constraint of each latent site, for biject_to
        shapes = []
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or name == observed or site["is_observed"] or site_is_subsample(site):
                continue
            if site["fn"].support.is_discrete:
                raise UserError(f"pyro model {self.source}: latent site {name!r} is discrete; inferkit's gradient "
                                "samplers need continuous latents")
            value = site["value"]
            if value.dim() == 0 or value.shape[0] != 2:
                raise UserError(f"pyro model {self.source}: latent site {name!r} is not drawn per example; draw it "
                                "inside pyro.plate over the examples so that dim 0 is the example")
            self.site_names.append(name)
            self.supports[name] = site["fn"].support
            shapes.append(tuple(biject_to(site["fn"].support).inv(value).shape[1:]))
        # Masks (inpainting) need the observed site's log-density per entry of x, not summed over it.
        self.supports_mask = tuple(trace.nodes[observed]["log_prob"].shape) == (2, *self.data_shape)
        if not self.site_names:
            raise UserError(f"pyro model {self.source}: it has no latent sample site")
        self.latent_shapes = tuple(shapes)
        store = pyro.get_param_store()
        used = {name for name, site in trace.nodes.items() if site["type"] == "param"}
        # The same leaf tensors as Pyro's parameter store: optimising them here updates the store.
        self.pyro_parameters = torch.nn.ParameterDict({
            name.replace(".", "_"): param for name, param in store.named_parameters() if name in used})

    # -- tracing --------------------------------------------------------------------------------
    def _first_trace(self):
        """The function traced on two placeholder examples, refused unless it records a sample site
        (a function that is not a Pyro model fails here, before it is used)."""
        try:
            trace = self._trace(self._placeholder(2), sample_observed=True)
        except Exception as exc:  # noqa: BLE001 - whatever the function raises, it is not a usable model
            raise UserError(f"pyro model {self.source}: tracing it on a placeholder batch of zeros failed "
                            f"({type(exc).__name__}: {exc}); is it a Pyro model function model(x)?") from None
        if not any(site["type"] == "sample" for site in trace.nodes.values()):
            raise UserError(f"pyro model {self.source}: tracing it on a placeholder batch records no sample "
                            "site; is it a Pyro model function model(x)?")
        return trace

    def _placeholder(self, n: int, like: Tensor | None = None) -> Tensor:
        """Data of ``n`` examples to trace the function on where no data is given (zeros)."""
        if like is None:
            return torch.zeros(n, *self.data_shape, dtype=self.dtype)
        return torch.zeros(n, *self.data_shape, dtype=like.dtype, device=like.device)

    def _trace(self, x: Tensor, values: dict[str, Tensor] | None = None, *, sample_observed: bool = False):
        """Trace the function on ``x`` with ``values`` conditioned; ``sample_observed`` draws the
        observed site (and every latent) instead, for sampling: do not combine it with ``values``."""
        function = poutine.condition(self.function, data=values) if values else self.function
        if sample_observed:
            function = poutine.uncondition(function)
        # No argument validation: its data-dependent checks cannot run under torch.func.vmap.
        with pyro.validation_enabled(False):
            trace = poutine.trace(function).get_trace(x)
            trace.compute_log_prob()
        return trace

    def _constrain(self, z: Latents) -> dict[str, Tensor]:
        """``z_l = T_l(u_l)``: the constrained value of every latent site."""
        return {name: biject_to(self.supports[name])(u) for name, u in zip(self.site_names, z)}

    def _latent_log_density(self, trace, z: Latents, batch: int) -> Tensor:
        """``sum_l log p(z_l | ...) + log|det dT_l/du_l|`` per example."""
        total = torch.zeros((), dtype=z[0].dtype, device=z[0].device)
        for name, u in zip(self.site_names, z):
            site = trace.nodes[name]
            jacobian = biject_to(site["fn"].support).log_abs_det_jacobian(u, site["value"])
            total = total + _per_example(site["log_prob"], batch) + _per_example(jacobian, batch)
        return total

    # -- the Model interface --------------------------------------------------------------------
    def log_joint(self, x: Tensor, z: Latents, mask: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        trace = self._trace(x, {**self._constrain(z), self.observed: x})
        likelihood = trace.nodes[self.observed]["log_prob"]
        if mask is not None:
            if likelihood.shape != x.shape:
                raise UserError(f"pyro model {self.source}: a mask needs an elementwise likelihood (log_prob of "
                                f"site {self.observed!r} shaped like x), not one of shape {tuple(likelihood.shape)}")
            likelihood = likelihood * mask
        return self._latent_log_density(trace, z, batch) + _per_example(likelihood, batch)

    def log_prior(self, z: Latents) -> Tensor:
        batch = z[0].shape[0]
        placeholder = self._placeholder(batch, like=z[0])
        trace = self._trace(placeholder, self._constrain(z))  # the placeholder's likelihood is not used
        return self._latent_log_density(trace, z, batch)

    def sample_prior(self, n: int, *, generator: torch.Generator | None = None) -> Latents:
        with _random_state(generator):
            trace = self._trace(self._placeholder(n), sample_observed=True)
        return tuple(biject_to(trace.nodes[name]["fn"].support).inv(trace.nodes[name]["value"]).detach()
                     for name in self.site_names)

    def decode(self, z: Latents) -> Tensor:
        """The mean of the observed site given ``z``."""
        placeholder = self._placeholder(z[0].shape[0], like=z[0])
        trace = self._trace(placeholder, self._constrain(z))
        return trace.nodes[self.observed]["fn"].mean.expand(placeholder.shape)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        with _random_state(generator):
            trace = self._trace(self._placeholder(n), sample_observed=True)
        return trace.nodes[self.observed]["value"].detach()

    @classmethod
    def options_for_data(cls, data_shape: tuple[int, ...]) -> dict:
        return {"data_shape": tuple(data_shape)}


def pyro_model(function: Callable[[Tensor], object], name: str | None = None) -> type[PyroModel]:
    """A :class:`PyroModel` class bound to the Pyro model ``function`` (register it as an entry point)."""
    label = name or f"{function.__module__}:{function.__qualname__}"
    return type(f"PyroModel[{label}]", (PyroModel,), {"function": staticmethod(function), "source": label})


def load_pyro_function(spec: str) -> type[PyroModel]:
    """``"module:function"`` (after ``pyro:``) -> a :class:`PyroModel` class, or a one-line UserError."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UserError(f"--model {PREFIX}{spec}: give {PREFIX}MODULE:FUNCTION, e.g. {PREFIX}mypkg.models:model")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--model {PREFIX}{spec}: cannot import {module_name!r} ({exc}); is it on "
                        "PYTHONPATH? (the working directory is not searched: for a module there run with "
                        "PYTHONPATH=.)") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise UserError(f"--model {PREFIX}{spec}: {module_name!r} has no function {attribute!r}")
    _check_python_function(function, module_name, f"{PREFIX}{spec}")
    return pyro_model(function, name=f"{PREFIX}{spec}")


def _check_python_function(function: object, module_name: str, label: str) -> None:
    """Refuse what cannot be a Pyro model function of ``module_name``: builtins and other C functions,
    classes, callable objects, and functions only imported into it (``pyro:os:system`` is refused
    here, before anything is called). What passes is then traced by :class:`PyroModel`."""
    if not inspect.isfunction(function):
        raise UserError(f"--model {label}: that is a {type(function).__name__}, not a Pyro model (a Python "
                        "function model(x) that draws sample sites)")
    if function.__module__ != module_name:
        raise UserError(f"--model {label}: that function is defined in {function.__module__!r}, not in "
                        f"{module_name!r}; name the module that defines the Pyro model")


__all__ = ["PREFIX", "PyroModel", "load_pyro_function", "pyro_model"]

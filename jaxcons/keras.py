"""Keras 3 interoperability: Keras constraints and regularizers as jaxcons objects and rules.

Requires Keras 3 (``pip install keras``); any backend can read the objects, and the rules fit a
training loop on the JAX backend.

* `from_keras` turns one Keras constraint or regularizer (an object, a name, or a config dict
  as ``keras.constraints.serialize`` and ``keras.regularizers.serialize`` write it) into the
  jaxcons object that computes the same thing.
* `rules_from_model` reads every constraint and regularizer a Keras model's trainable
  variables carry (a layer's ``kernel_constraint``, ``bias_regularizer``, ...; a custom
  layer's ``add_weight(constraint=..., regularizer=...)``) and returns them as path rules
  keyed by each variable's ``variable.path``: the keys of the parameter dict
  ``{v.path: v.value for v in model.trainable_variables}`` that a Keras-on-JAX training loop
  holds.

Those rules go where any jaxcons rules go:

.. code-block:: python

   constraint_rules, regularizer_rules = jaxcons.keras.rules_from_model(model)
   params = {v.path: v.value for v in model.trainable_variables}
   tx = jaxcons.chain(optax.adam(1e-3), constraints=constraint_rules)
   # In the loss: the model's output by model.stateless_call, plus
   # jaxcons.penalty(params, regularizer_rules), which is Keras's sum(model.losses).

Activity regularizers act on a layer's outputs, not on a parameter, so they have no rule:
convert one with `from_keras` and add `jaxcons.activity_penalty` of the layer's output to the
loss.

**Backend.** Keras picks its backend when it is first imported, from ``KERAS_BACKEND`` (its
default is TensorFlow, which a JAX user rarely has installed). Importing this module before
Keras selects the JAX backend (``KERAS_BACKEND=jax``) unless that variable is already set;
with Keras already loaded on another backend, the import raises ``ImportError`` saying what to
set.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "jax")

import keras

if keras.backend.backend() != "jax":
    raise ImportError(
        f"jaxcons.keras needs Keras on its JAX backend, but Keras runs on "
        f"{keras.backend.backend()!r} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}). Set "
        "KERAS_BACKEND=jax before Keras is first imported: in the shell, or with "
        "os.environ['KERAS_BACKEND'] = 'jax' at the top of the script, before any import of "
        "keras."
    )

import jaxcons
from jaxcons._src.patterns import exact_pattern

__all__ = ["from_keras", "rules_from_model"]


def _equivalents() -> dict[type, type]:
    """Keras class -> the jaxcons class taking the same arguments (the keys of Keras's
    get_config), read from each public jaxcons class's ``keras_equivalent``."""
    out: dict[type, type] = {}
    for namespace in (jaxcons.constraints, jaxcons.regularizers):
        for name in namespace.__all__:
            cls = getattr(namespace, name)
            if not isinstance(cls, type) or name != cls.__name__ or cls.keras_equivalent is None:
                continue
            module, _, attr = cls.keras_equivalent.rpartition(".")
            out[getattr(importlib.import_module(module), attr)] = cls
    return out


_EQUIVALENTS = _equivalents()


def _supported() -> str:
    """``"keras.constraints.MaxNorm, MinMaxNorm, ... and keras.regularizers.L1, ..."``."""
    groups: dict[str, list[str]] = {}
    for cls in _EQUIVALENTS.values():
        module, _, name = str(cls.keras_equivalent).rpartition(".")
        groups.setdefault(module, []).append(name)
    listed = [f"{module}.{', '.join(sorted(names))}" for module, names in groups.items()]
    return " and ".join(listed) + " (those exact classes: a subclass may compute something else)"


_SUPPORTED = _supported()


def _no_equivalent(obj: Any, what: str) -> ValueError:
    return ValueError(
        f"jaxcons.keras.from_keras: {obj!r} ({what}) has no jaxcons equivalent. Supported: "
        f"{_SUPPORTED}. Write it as a jaxcons.Constraint or jaxcons.Regularizer and give it in "
        "explicit rules."
    )


def _convert(obj: Any) -> jaxcons.Constraint | jaxcons.Regularizer:
    """The jaxcons equivalent of a Keras constraint or regularizer object."""
    cls = _EQUIVALENTS.get(type(obj))
    if cls is None:
        for keras_cls in _EQUIVALENTS:
            if isinstance(obj, keras_cls):
                raise _no_equivalent(obj, f"a subclass of keras {keras_cls.__name__}")
        raise _no_equivalent(obj, f"of type {type(obj).__module__}.{type(obj).__qualname__}")
    config = obj.get_config()
    try:
        return cls(**config)
    except (TypeError, ValueError) as e:  # A value jaxcons rejects, or a key it does not know.
        raise ValueError(
            f"jaxcons.keras.from_keras: keras {type(obj).__name__} with config {config!r} has "
            f"no valid jaxcons {cls.__name__}: {e}"
        ) from None


def _from_name(name: str) -> jaxcons.Constraint | jaxcons.Regularizer:
    for module in (keras.constraints, keras.regularizers):
        try:
            obj = module.get(name)
        except ValueError:
            continue
        return _convert(obj)
    hint = ""
    if name == "l1_l2":
        hint = (
            " (Keras 3 rejects 'l1_l2', although its documentation gives it; pass "
            "keras.regularizers.L1L2(l1=0.01, l2=0.01))"
        )
    raise ValueError(
        f"jaxcons.keras.from_keras: Keras 3 knows no constraint or regularizer named "
        f"{name!r}{hint}. Supported: {_SUPPORTED}."
    )


def _from_config(config: dict[str, Any]) -> jaxcons.Constraint | jaxcons.Regularizer:
    if "class_name" not in config:
        raise ValueError(
            "jaxcons.keras.from_keras: a Keras config dict has a 'class_name' key (as "
            f"keras.constraints.serialize writes it), got {config!r}."
        )
    errors = []
    for module in (keras.constraints, keras.regularizers):
        try:
            obj = module.deserialize(config)
        except (TypeError, ValueError) as e:
            errors.append(f"{module.__name__}.deserialize: {e}")
            continue
        # For a class it does not know, Keras returns the class name as a string.
        if type(obj) in _EQUIVALENTS:
            return _convert(obj)
    if errors:
        raise ValueError(
            f"jaxcons.keras.from_keras: Keras could not build {config!r}: {'; '.join(errors)}"
        )
    raise _no_equivalent(config, f"a config of class {config['class_name']!r}")


def from_keras(obj: Any) -> jaxcons.Constraint | jaxcons.Regularizer | None:
    """Returns the jaxcons constraint or regularizer equivalent to a Keras 3 one.

    ``keras.constraints.MaxNorm``, ``MinMaxNorm``, ``NonNeg`` and ``UnitNorm`` become
    `jaxcons.MaxNorm`, `jaxcons.MinMaxNorm`, `jaxcons.NonNeg` and `jaxcons.UnitNorm`;
    ``keras.regularizers.L1``, ``L2``, ``L1L2`` and ``OrthogonalRegularizer`` become
    `jaxcons.L1`, `jaxcons.L2`, `jaxcons.L1L2` and `jaxcons.OrthogonalRegularizer`. The
    arguments are read from the Keras object's ``get_config()``, so they are the values Keras
    computes with: ``axis`` as Keras has it (an int, a list, or ``None``), and a factor that
    Keras keeps as a float32 tensor (``L1``'s ``l1`` and ``OrthogonalRegularizer``'s
    ``factor``) as that float32 value, so ``keras.regularizers.L1(0.01)`` becomes
    ``L1(l1=0.009999999776482582)``. Values agree with Keras's; the constraints differ from
    Keras's only by its ``1e-7`` epsilon (see `jaxcons.MaxNorm`).

    A name and a config dict are resolved by Keras itself (``keras.constraints.get``,
    ``keras.regularizers.deserialize``, ...), so they mean what they mean in Keras: ``"l1"``
    is ``L1(0.01)`` rounded to float32, ``"l1l2"`` is Keras's ``L1L2()`` with both factors
    0, and ``"l1_l2"``, which Keras 3 rejects, is an error (`jaxcons.regularizers.get` reads
    it as the Keras documentation promises).

    Args:
      obj: a Keras constraint or regularizer object, a name Keras knows (``"max_norm"``,
        ``"l2"``), or a config dict (``keras.constraints.serialize(c)``); a
        `jaxcons.Constraint` or `jaxcons.Regularizer`, returned as it is (Keras accepts any
        callable as a constraint, so a Keras layer may hold one); or ``None``, returned as it
        is.

    Returns:
      The `jaxcons.Constraint` or `jaxcons.Regularizer`, or ``None``.

    Raises:
      ValueError: for a Keras object, name or config without a jaxcons equivalent (a custom
        Keras constraint, a subclass of a supported class, a plain function), naming it and
        listing the supported classes; for a name Keras does not know; for a config Keras
        cannot build; for a Keras config that the jaxcons class rejects (``MinMaxNorm`` with
        ``min_value > max_value``, an empty ``axis`` list).
      TypeError: for a class instead of an instance, or anything that is not a constraint,
        a regularizer, a name or a dict.

    Example:
      >>> import keras, jaxcons.keras
      >>> jaxcons.keras.from_keras(keras.constraints.MaxNorm(1.5, axis=[0, 1, 2]))
      MaxNorm(max_value=1.5, axis=[0, 1, 2])
      >>> jaxcons.keras.from_keras(keras.regularizers.L1(0.01))
      L1(l1=0.009999999776482582)
      >>> jaxcons.keras.from_keras("non_neg")
      NonNeg()
      >>> jaxcons.keras.from_keras(keras.regularizers.serialize(keras.regularizers.L2(1e-4)))
      L2(l2=0.0001)
    """
    if obj is None or isinstance(obj, (jaxcons.Constraint, jaxcons.Regularizer)):
        return obj
    if isinstance(obj, type):
        raise TypeError(
            f"jaxcons.keras.from_keras expects an instance, got the class {obj.__name__}; call "
            f"it first: {obj.__name__}()."
        )
    if isinstance(obj, str):
        return _from_name(obj)
    if isinstance(obj, dict):
        return _from_config(obj)
    if callable(obj):
        return _convert(obj)
    raise TypeError(
        f"jaxcons.keras.from_keras: cannot interpret {obj!r} of type {type(obj).__name__}: "
        "expected a Keras constraint or regularizer, a name, a config dict or None."
    )


def _activity_layers(model: Any) -> list[str]:
    # Keras 3 has no public recursive walk over a layer's sublayers; _flatten_layers is the
    # one its own Layer.losses uses.
    return [
        layer.name
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if getattr(layer, "activity_regularizer", None) is not None
    ]


def rules_from_model(
    model: Any, *, ignore_activity: bool = False
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Returns the constraint and regularizer rules of a Keras 3 model's trainable variables.

    Every trainable variable that carries a constraint (``variable.constraint``: a layer's
    ``kernel_constraint``, ``bias_constraint``, ..., or ``add_weight(constraint=...)``) or a
    regularizer (``variable.regularizer``: ``kernel_regularizer``, ``bias_regularizer``, ...,
    or ``add_weight(regularizer=...)``) gives one rule, converted by `from_keras`, whose
    pattern is exactly the variable's ``path`` (``"dense/kernel"``, or
    ``"sequential/dense_1/bias"`` inside a ``Sequential``; glob metacharacters are escaped).
    Those are what Keras itself applies: its optimizer projects each trainable variable with
    its constraint after the update, and ``model.losses`` holds each trainable variable's
    regularizer; non-trainable variables get neither, here as in Keras.

    The rules fit a parameter dict ``{v.path: v.value for v in model.trainable_variables}``,
    whose jaxcons paths are its keys: ``jaxcons.penalty(params, regularizer_rules)`` is
    Keras's weight-regularization loss, and ``jaxcons.constrain(constraint_rules)`` (or
    `jaxcons.chain`) applies what ``fit()`` applies. Losses a layer adds with ``add_loss`` in
    its ``call`` are not rules either: they are the model's own.

    Args:
      model: a built Keras 3 model or layer (its variables exist: it has been called, or
        built from a ``keras.Input``).
      ignore_activity: activity regularizers act on outputs, not on parameters, so they give
        no rule; a model with one is an error (it would otherwise be dropped without a word)
        unless this is ``True``. Add `jaxcons.activity_penalty` of the layer's output to the
        loss instead.

    Returns:
      ``(constraint_rules, regularizer_rules)``: two lists of ``(pattern, object)`` pairs in
      the order of ``model.trainable_variables``, usable wherever jaxcons takes rules.

    Raises:
      TypeError: for something that is not a Keras layer or model.
      ValueError: for a model without trainable variables (not built yet?); for two trainable
        variables with the same path (their dict would keep only one); for a constraint or
        regularizer without a jaxcons equivalent (naming the variable's path); for a model
        with activity regularizers (naming the layers) unless ``ignore_activity=True``.

    Example:
      >>> import keras, jaxcons, jaxcons.keras
      >>> model = keras.Sequential([
      ...     keras.Input((3,)),
      ...     keras.layers.Dense(2, name="dense", kernel_constraint="non_neg",
      ...                        bias_initializer="ones",
      ...                        bias_regularizer=keras.regularizers.L2(0.5)),
      ... ], name="model")
      >>> constraint_rules, regularizer_rules = jaxcons.keras.rules_from_model(model)
      >>> constraint_rules
      [('model/dense/kernel', NonNeg())]
      >>> regularizer_rules
      [('model/dense/bias', L2(l2=0.5))]
      >>> params = {v.path: v.value for v in model.trainable_variables}
      >>> jaxcons.penalty(params, regularizer_rules)
      Array(1., dtype=float32)
    """
    if not isinstance(model, keras.Layer):
        raise TypeError(
            f"jaxcons.keras.rules_from_model expects a Keras 3 model or layer, got {model!r} of "
            f"type {type(model).__name__}."
        )
    if not isinstance(ignore_activity, bool):
        raise ValueError(f"ignore_activity must be True or False, got {ignore_activity!r}.")
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError(
            f"{type(model).__name__} {model.name!r} has no trainable variables: build it first "
            "(call it on a batch, or start it with a keras.Input)."
        )
    if not ignore_activity:
        names = _activity_layers(model)
        if names:
            raise ValueError(
                f"{type(model).__name__} {model.name!r} has activity regularizers (layers "
                f"{', '.join(map(repr, names))}): they act on outputs, not parameters, so no "
                "rule can hold them. Add jaxcons.activity_penalty(jaxcons.keras.from_keras("
                "layer.activity_regularizer), output) to the loss, and pass "
                "ignore_activity=True."
            )
    seen: dict[str, Any] = {}
    constraint_rules: list[tuple[str, Any]] = []
    regularizer_rules: list[tuple[str, Any]] = []
    for v in variables:
        if v.path in seen:
            if seen[v.path] is v:
                continue
            raise ValueError(
                f"Two trainable variables of {type(model).__name__} {model.name!r} have the path "
                f"{v.path!r}: a dict keyed by path would keep only one. Give them distinct "
                "names (add_weight(name=...))."
            )
        seen[v.path] = v
        for attribute, rules in (
            ("constraint", constraint_rules),
            ("regularizer", regularizer_rules),
        ):
            declared = getattr(v, attribute)
            if declared is None:
                continue
            try:
                converted = from_keras(declared)
            except (TypeError, ValueError) as e:
                raise type(e)(f"The {attribute} of Keras variable {v.path!r}: {e}") from None
            rules.append((exact_pattern(v.path), converted))
    return constraint_rules, regularizer_rules

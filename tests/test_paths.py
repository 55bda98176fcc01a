"""Parameter paths: plain pytrees, attribute containers, flax boxes and nnx Variables."""

import collections
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx, struct

import jaxcons


class _Pair(NamedTuple):
    kernel: jax.Array
    bias: jax.Array


@struct.dataclass
class _StructLayer:
    kernel: jax.Array
    name: str = struct.field(pytree_node=False, default="layer")


@chex.dataclass
class _ChexLayer:
    kernel: jax.Array
    bias: jax.Array


class _Opaque:
    """A pytree node registered without keys: its children get `FlattenedIndexKey`s."""

    def __init__(self, x):
        self.x = x


jax.tree_util.register_pytree_node(_Opaque, lambda b: ((b.x,), None), lambda _, c: _Opaque(*c))


def test_dict_list_tuple_paths():
    tree = {"a": [jnp.ones(1), (jnp.ones(1), {"b": jnp.ones(1)})], "c": jnp.ones(1)}
    assert jaxcons.paths(tree) == ["a/0", "a/1/0", "a/1/1/b", "c"]


def test_dict_keys_are_sorted_like_jax_flattening():
    tree = {"z": jnp.ones(1), "a": jnp.ones(1)}
    assert jaxcons.paths(tree) == ["a", "z"]


def test_non_string_dict_keys_become_segments():
    assert jaxcons.paths({0: {"w": jnp.ones(1)}, 1: jnp.ones(1)}) == ["0/w", "1"]


def test_namedtuple_fields_are_attribute_names():
    assert jaxcons.paths({"layer": _Pair(jnp.ones(2), jnp.ones(2))}) == [
        "layer/kernel",
        "layer/bias",
    ]


def test_flax_struct_dataclass_fields():
    # Static (non-pytree) fields have no leaf and hence no path.
    assert jaxcons.paths([_StructLayer(jnp.ones(2))]) == ["0/kernel"]


def test_chex_dataclass_fields():
    assert jaxcons.paths((_ChexLayer(kernel=jnp.ones(2), bias=jnp.ones(2)),)) == [
        "0/bias",
        "0/kernel",
    ]


def test_node_without_keys_uses_flattened_index():
    assert jaxcons.paths({"box": _Opaque(jnp.ones(1))}) == ["box/0"]


def test_single_array_has_the_empty_path():
    assert jaxcons.paths(jnp.ones(3)) == [""]


def test_none_is_not_a_leaf():
    assert jaxcons.paths({"a": None, "b": jnp.ones(1)}) == ["b"]


def test_masked_node_is_kept_as_a_leaf():
    tree = {"kernel": optax.MaskedNode(), "bias": jnp.ones(2)}
    assert jaxcons.paths(tree) == ["bias", "kernel"]


def test_masked_params_from_optax_masked_keep_their_paths():
    params = {"params": {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}}
    seen = []

    def record(updates, state, params=None):
        seen.append(jaxcons.paths(params))
        return updates, state

    inner = optax.GradientTransformation(lambda p: optax.EmptyState(), record)
    tx = optax.masked(inner, {"params": {"Dense_0": {"kernel": True, "bias": False}}})
    tx.update(params, tx.init(params), params)
    assert seen == [["params/Dense_0/bias", "params/Dense_0/kernel"]]


def test_linen_variables_read_like_plain_dicts():
    variables = nn.Dense(2).init(jax.random.key(0), jnp.ones((1, 3)))
    assert jaxcons.paths(variables) == ["params/bias", "params/kernel"]
    stacked = nn.Sequential([nn.Dense(3), nn.Dense(2)]).init(jax.random.key(0), jnp.ones((1, 2)))
    assert jaxcons.paths(stacked) == [
        "params/layers_0/bias",
        "params/layers_0/kernel",
        "params/layers_1/bias",
        "params/layers_1/kernel",
    ]


def test_linen_style_nested_params():
    params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}
    assert jaxcons.paths(params) == ["params/Dense_0/bias", "params/Dense_0/kernel"]


@pytest.mark.parametrize(
    "box",
    [
        lambda x: nn.Partitioned(x, names=(None, "model")),
        lambda x: nn.LogicallyPartitioned(x, names=("embed", "mlp")),
    ],
    ids=["Partitioned", "LogicallyPartitioned"],
)
def test_flax_metadata_boxes_drop_their_value_field(box):
    plain = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2))}}}
    boxed = {"params": {"Dense_0": {"kernel": box(jnp.ones((3, 2)))}}}
    # The box's payload is its `value` attribute ...
    ((keypath, _),) = jax.tree_util.tree_flatten_with_path(boxed)[0]
    assert keypath[-1] == jax.tree_util.GetAttrKey("value")
    # ... which the path does not show.
    assert jaxcons.paths(boxed) == jaxcons.paths(plain) == ["params/Dense_0/kernel"]


def test_linen_partitioned_init_reads_like_plain():
    dense = nn.Dense(2, kernel_init=nn.with_partitioning(nn.initializers.ones, (None, "model")))
    variables = dense.init(jax.random.key(0), jnp.ones((1, 3)))
    assert isinstance(variables["params"]["kernel"], nn.Partitioned)
    assert jaxcons.paths(variables) == ["params/bias", "params/kernel"]


def test_nnx_linear_state_paths_name_the_parameter():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    raw = [
        "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in kp)
        for kp, _ in jax.tree_util.tree_flatten_with_path(state)[0]
    ]
    # JAX itself reports the Variable payload as a trailing `value` attribute.
    assert raw == ["bias/value", "kernel/value"]
    assert jaxcons.paths(state) == ["bias", "kernel"]
    assert jaxcons.paths(nnx.state(model, nnx.Param)) == ["bias", "kernel"]
    assert jaxcons.paths(nnx.split(model)[1]) == ["bias", "kernel"]


def test_nnx_state_pure_dict_and_variables_read_alike():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    assert jaxcons.paths(state) == jaxcons.paths(nnx.to_pure_dict(state))
    variables = {"kernel": nnx.Param(jnp.ones((3, 2))), "bias": nnx.Param(jnp.zeros(2))}
    assert jaxcons.paths(variables) == ["bias", "kernel"]


def test_nnx_module_lists_use_indices():
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(3, 3, rngs=rngs), nnx.Linear(3, 2, rngs=rngs)])
            self.count = nnx.BatchStat(jnp.array(0))

    state = nnx.state(MLP(nnx.Rngs(0)))
    assert jaxcons.paths(state) == [
        "count",
        "layers/0/bias",
        "layers/0/kernel",
        "layers/1/bias",
        "layers/1/kernel",
    ]


@pytest.mark.parametrize("payload", ["value", "raw_value"])
def test_trailing_payload_attribute_is_dropped_but_dict_keys_are_kept(payload):
    # A box's payload is an attribute (GetAttrKey): dropped. A dict key named `value` is a
    # parameter's or module's own name (attention's value projection): kept, so
    # `self.param("value", ...)` is reachable by "**/value".
    box = collections.namedtuple("Box", [payload])
    assert jaxcons.paths({"kernel": box(jnp.ones(1))}) == ["kernel"]
    assert jaxcons.paths({"attn": {payload: jnp.ones(1), "key": jnp.ones(1)}}) == [
        "attn/key",
        f"attn/{payload}",
    ]
    assert jaxcons.paths({"attn": {payload: {"kernel": jnp.ones(1)}}}) == [f"attn/{payload}/kernel"]
    # A lone top-level key is kept, so a path is never emptied by the rule.
    assert jaxcons.paths(box(jnp.ones(1))) == [payload]


def test_path_str_joins_key_entries():
    ((kp, _),) = jax.tree_util.tree_flatten_with_path({"dense": [1.0, 2.0]})[0][:1]
    assert jaxcons.path_str(kp) == "dense/0"
    assert jaxcons.path_str(()) == ""


def test_path_str_for_each_key_kind():
    keys = [
        jax.tree_util.DictKey("a"),
        jax.tree_util.DictKey(3),
        jax.tree_util.GetAttrKey("kernel"),
        jax.tree_util.SequenceKey(2),
        jax.tree_util.FlattenedIndexKey(1),
    ]
    assert jaxcons.path_str(keys) == "a/3/kernel/2/1"


def test_nested_boxes_drop_every_trailing_payload_key():
    inner = nn.Partitioned(jnp.ones((3, 2)), names=(None, "model"))
    assert jaxcons.paths({"Dense_0": {"kernel": nnx.Param(inner)}}) == ["Dense_0/kernel"]
    outer, inner_box = (collections.namedtuple(n, [n]) for n in ("value", "raw_value"))
    assert jaxcons.paths({"kernel": outer(inner_box(jnp.ones(1)))}) == ["kernel"]

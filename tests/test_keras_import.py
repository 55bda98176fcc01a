"""`jaxcons.keras`: Keras 3 constraints and regularizers as jaxcons objects, and a model's rules.

The oracles are Keras 3 itself (on its JAX backend): the converted objects compute what the
Keras objects compute, ``jaxcons.penalty`` over the rules of a model is its ``sum(model.losses)``,
the constraint rules project as each variable's ``constraint`` does, and one step of a JAX loop
with the rules gives the parameters Keras's ``train_on_batch`` gives. Expected objects are
written out by hand, with Keras's float32 rounding of a factor computed by NumPy.

Keras builds its layers with broadcasting (a bias added to a batch), so every Keras call here
runs with rank promotion allowed, and its training step under standard dtype promotion.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import keras  # KERAS_BACKEND=jax is set by the root conftest.py.
import numpy as np
import optax
import pytest

import jaxcons
import jaxcons.keras
from jaxcons import L1, L1L2, L2, MaxNorm, MinMaxNorm, NonNeg, OrthogonalRegularizer, UnitNorm

pytestmark = pytest.mark.keras

kc, kr = keras.constraints, keras.regularizers


def f32(x: float) -> float:
    """The float32 value nearest ``x``, as a Python float: what Keras keeps for some factors."""
    return float(np.float32(x))


def keras_context() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack


def test_backend_is_jax():
    assert keras.backend.backend() == "jax"


# (Keras object factory, the jaxcons object it must become, the shape to compare values on).
OBJECTS = {
    "max_norm_default": (lambda: kc.MaxNorm(), MaxNorm(2.0, axis=0), (8, 5)),
    "max_norm_filters": (
        lambda: kc.MaxNorm(1.5, axis=[0, 1, 2]),
        MaxNorm(1.5, axis=[0, 1, 2]),
        (3, 3, 4, 6),
    ),
    "max_norm_whole": (lambda: kc.MaxNorm(0.5, axis=None), MaxNorm(0.5, axis=None), (4, 3)),
    "min_max_norm_default": (lambda: kc.MinMaxNorm(), MinMaxNorm(0.0, 1.0, 1.0, 0), (8, 5)),
    "min_max_norm_rate": (
        lambda: kc.MinMaxNorm(0.5, 1.5, rate=0.3, axis=1),
        MinMaxNorm(0.5, 1.5, rate=0.3, axis=1),
        (8, 5),
    ),
    "non_neg": (lambda: kc.NonNeg(), NonNeg(), (8, 5)),
    "unit_norm_last": (lambda: kc.UnitNorm(axis=-1), UnitNorm(axis=-1), (8, 5)),
    "unit_norm_tuple": (lambda: kc.UnitNorm(axis=(0, 1)), UnitNorm(axis=(0, 1)), (3, 4, 5)),
    "l1": (lambda: kr.L1(0.01), L1(f32(0.01)), (8, 5)),
    "l1_default": (lambda: kr.L1(), L1(f32(0.01)), (8, 5)),
    "l2": (lambda: kr.L2(1e-4), L2(1e-4), (8, 5)),
    "l1l2": (lambda: kr.L1L2(l1=0.01, l2=0.02), L1L2(l1=0.01, l2=0.02), (8, 5)),
    "l1l2_zero": (lambda: kr.L1L2(), L1L2(l1=0.0, l2=0.0), (8, 5)),
    "orthogonal": (
        lambda: kr.OrthogonalRegularizer(0.1, "columns"),
        OrthogonalRegularizer(f32(0.1), "columns"),
        (8, 5),
    ),
    "orthogonal_default": (
        lambda: kr.OrthogonalRegularizer(),
        OrthogonalRegularizer(f32(0.01), "rows"),
        (5, 8),
    ),
}


def serialize(obj):
    module = kc if isinstance(obj, kc.Constraint) else kr
    return module.serialize(obj)


def spread_tensor(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Normal entries, each last-axis slice scaled by a factor in [0.3, 3]: norms on both sides
    of every bound, and none near zero (where Keras's 1e-7 epsilon would show)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * rng.uniform(0.3, 3.0, size=shape[-1])).astype(np.float32)


@pytest.mark.parametrize("case", OBJECTS)
def test_from_keras_object_and_its_config(case):
    make, expected, _ = OBJECTS[case]
    keras_obj = make()
    ours = jaxcons.keras.from_keras(keras_obj)
    assert type(ours) is type(expected)
    assert ours == expected, (ours, expected)
    # The dict keras.*.serialize writes, and a bare one (as older configs have it).
    config = serialize(keras_obj)
    assert jaxcons.keras.from_keras(config) == expected
    bare = {"class_name": config["class_name"], "config": config["config"]}
    assert jaxcons.keras.from_keras(bare) == expected


@pytest.mark.parametrize("case", OBJECTS)
def test_from_keras_computes_what_keras_computes(case):
    make, _, shape = OBJECTS[case]
    keras_obj = make()
    ours = jaxcons.keras.from_keras(keras_obj)
    w = spread_tensor(shape, seed=len(case))
    theirs = np.asarray(keras.ops.convert_to_numpy(keras_obj(jnp.asarray(w))))
    mine = np.asarray(ours(jnp.asarray(w)))
    if isinstance(keras_obj, kc.Constraint):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=0)
    else:
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("max_norm", MaxNorm(2.0, axis=0)),
        ("MaxNorm", MaxNorm(2.0, axis=0)),
        ("min_max_norm", MinMaxNorm(0.0, 1.0, 1.0, 0)),
        ("non_neg", NonNeg()),
        ("NonNeg", NonNeg()),
        ("unit_norm", UnitNorm(axis=0)),
        ("l1", L1(f32(0.01))),
        ("L1", L1(f32(0.01))),
        ("l2", L2(0.01)),
        # Keras 3 maps its class's snake_case name to the class defaults: no penalty.
        ("l1l2", L1L2(l1=0.0, l2=0.0)),
        ("L1L2", L1L2(l1=0.0, l2=0.0)),
        ("orthogonal_regularizer", OrthogonalRegularizer(f32(0.01), "rows")),
    ],
)
def test_from_keras_name_means_what_it_means_in_keras(name, expected):
    ours = jaxcons.keras.from_keras(name)
    assert type(ours) is type(expected)
    assert ours == expected


def test_from_keras_snake_case_class_name_in_a_config():
    config = {"class_name": "max_norm", "config": {"max_value": 3.0, "axis": 1}}
    assert jaxcons.keras.from_keras(config) == MaxNorm(3.0, axis=1)


def test_from_keras_keeps_the_float32_factor_keras_computes_with():
    # Keras keeps L1's factor as a float32 tensor: its penalty uses float32(0.01), not 0.01.
    converted = jaxcons.keras.from_keras(kr.L1(0.01))
    assert converted.l1 == 0.009999999776482582
    assert converted.l1 != 0.01
    x = jnp.full((3,), 100.0, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(converted(x)), np.asarray(keras.ops.convert_to_numpy(kr.L1(0.01)(x)))
    )


def test_from_keras_passes_jaxcons_objects_and_none_through():
    c, r = jaxcons.MaxNorm(1.0), jaxcons.L2(0.5)
    assert jaxcons.keras.from_keras(c) is c
    assert jaxcons.keras.from_keras(r) is r
    assert jaxcons.keras.from_keras(None) is None


class CenterAround(kc.Constraint):
    """The custom constraint of the Keras documentation."""

    def __init__(self, ref_value=0.0):
        self.ref_value = ref_value

    def __call__(self, w):
        mean = keras.ops.mean(w)
        return w - mean + self.ref_value

    def get_config(self):
        return {"ref_value": self.ref_value}


class ScaledMaxNorm(kc.MaxNorm):
    """A subclass of a supported class that computes something else."""

    def __call__(self, w):
        return 2.0 * super().__call__(w)


SUPPORTED = r"Supported: keras\.constraints\.MaxNorm, MinMaxNorm, NonNeg, UnitNorm"


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (
            CenterAround(),
            rf"CenterAround.*\(of type .*CenterAround\) has no jaxcons equivalent\. "
            rf"{SUPPORTED}",
        ),
        (ScaledMaxNorm(), r"\(a subclass of keras MaxNorm\) has no jaxcons equivalent"),
        (lambda w: w, rf"<lambda>.*has no jaxcons equivalent\. {SUPPORTED}"),
        (kc.Constraint(), r"of type keras\.src\.constraints\.constraints\.Constraint\) has no "),
        (kr.Regularizer(), r"Regularizer\) has no jaxcons equivalent"),
        ("foo", rf"Keras 3 knows no constraint or regularizer named 'foo'\. {SUPPORTED}"),
        # tf.keras 2's name, which Keras 3 no longer knows.
        ("maxnorm", r"Keras 3 knows no constraint or regularizer named 'maxnorm'"),
        (
            "l1_l2",
            r"named 'l1_l2' \(Keras 3 rejects 'l1_l2', although its documentation gives "
            r"it; pass keras\.regularizers\.L1L2\(l1=0\.01, l2=0\.01\)\)",
        ),
        ({"config": {"max_value": 2.0}}, r"a Keras config dict has a 'class_name' key"),
        (
            {"class_name": "CenterAround", "config": {}},
            r"\(a config of class 'CenterAround'\) has no jaxcons equivalent",
        ),
        (
            {"class_name": "MaxNorm", "config": {"bogus": 1}},
            r"(?s)Keras could not build \{'class_name': 'MaxNorm'.*"
            r"unexpected keyword argument 'bogus'",
        ),
        (
            kc.MinMaxNorm(2.0, 1.0),
            r"keras MinMaxNorm with config .* has no valid jaxcons "
            r"MinMaxNorm: MinMaxNorm needs min_value <= max_value, got min_value=2\.0",
        ),
        (
            kc.MaxNorm(2.0, axis=[]),
            r"keras MaxNorm with config .* no valid jaxcons MaxNorm: axis "
            r"must be an int, a non-empty list/tuple of ints, or None, got \[\]",
        ),
    ],
    ids=lambda x: x if isinstance(x, str) and len(x) < 12 else None,
)
def test_from_keras_without_an_equivalent_is_an_error(obj, match):
    with pytest.raises(ValueError, match=match):
        jaxcons.keras.from_keras(obj)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (kc.NonNeg, r"expects an instance, got the class NonNeg; call it first: NonNeg\(\)"),
        (3, r"cannot interpret 3 of type int: expected a Keras constraint or regularizer"),
    ],
)
def test_from_keras_type_errors(obj, match):
    with pytest.raises(TypeError, match=match):
        jaxcons.keras.from_keras(obj)


class Scale(keras.layers.Layer):
    """A custom layer: a trainable scale declared with add_weight(constraint=, regularizer=),
    and a non-trainable one with both too (Keras applies neither to it)."""

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape[-1],),
            name="w",
            initializer="ones",
            constraint=kc.MaxNorm(1.0, axis=None),
            regularizer=kr.L1(0.05),
        )
        self.fixed = self.add_weight(
            shape=(input_shape[-1],),
            name="fixed",
            initializer="ones",
            trainable=False,
            constraint=kc.NonNeg(),
            regularizer=kr.L2(1.0),
        )

    def call(self, x):
        return x * self.w * self.fixed


@pytest.fixture(scope="module")
def net() -> keras.Model:
    """The functional model, built once (Keras takes seconds to build it): each test that
    depends on its weights assigns them first."""
    keras.utils.set_random_seed(0)
    normal = keras.initializers.RandomNormal(stddev=0.5, seed=1)
    with keras_context():
        inputs = keras.Input((6, 6, 2))
        x = keras.layers.Conv2D(
            4,
            3,
            name="conv",
            bias_initializer=normal,
            kernel_constraint=kc.MaxNorm(1.5, axis=[0, 1, 2]),
            bias_constraint="non_neg",
            kernel_regularizer=kr.L1L2(l1=1e-3, l2=1e-2),
            bias_regularizer="l2",
        )(inputs)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(
            8,
            name="hidden",
            bias_initializer=normal,
            kernel_constraint=kc.MinMaxNorm(0.5, 1.0, rate=0.5, axis=0),
            kernel_regularizer=kr.OrthogonalRegularizer(0.1, "columns"),
            bias_regularizer=kr.L1(0.01),
        )(x)
        x = Scale(name="scale")(x)
        frozen = keras.layers.Dense(8, name="frozen", kernel_regularizer=kr.L2(1.0))
        frozen.trainable = False
        x = frozen(x)
        outputs = keras.layers.Dense(3, name="out", kernel_constraint=kc.UnitNorm(axis=0))(x)
        return keras.Model(inputs, outputs, name="net")


EXPECTED_CONSTRAINTS = [
    ("conv/kernel", MaxNorm(1.5, axis=[0, 1, 2])),
    ("conv/bias", NonNeg()),
    ("hidden/kernel", MinMaxNorm(0.5, 1.0, rate=0.5, axis=0)),
    ("scale/w", MaxNorm(1.0, axis=None)),
    ("out/kernel", UnitNorm(axis=0)),
]
EXPECTED_REGULARIZERS = [
    ("conv/kernel", L1L2(l1=1e-3, l2=1e-2)),
    ("conv/bias", L2(0.01)),
    ("hidden/kernel", OrthogonalRegularizer(f32(0.1), "columns")),
    ("hidden/bias", L1(f32(0.01))),
    ("scale/w", L1(f32(0.05))),
]


def params_of(model: keras.Model) -> dict[str, jax.Array]:
    return {v.path: v.value for v in model.trainable_variables}


def test_rules_from_a_functional_model(net):
    model = net
    constraint_rules, regularizer_rules = jaxcons.keras.rules_from_model(model)
    assert constraint_rules == EXPECTED_CONSTRAINTS
    assert regularizer_rules == EXPECTED_REGULARIZERS
    # The rules' patterns are the parameter dict's keys, which are its jaxcons paths.
    params = params_of(model)
    assert sorted(jaxcons.paths(params)) == sorted(v.path for v in model.trainable_variables)
    assert "scale/fixed" not in params  # Non-trainable: Keras constrains and penalizes it not.


def test_rules_from_a_sequential_model():
    keras.utils.set_random_seed(0)
    with keras_context():
        model = keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(
                    4, name="a", kernel_constraint="max_norm", kernel_regularizer="l2"
                ),
                keras.layers.Dense(
                    3,
                    name="b",
                    bias_constraint=kc.NonNeg(),
                    bias_regularizer=kr.L1(0.5),
                    bias_initializer="ones",
                ),
            ],
            name="seq",
        )
    constraint_rules, regularizer_rules = jaxcons.keras.rules_from_model(model)
    assert constraint_rules == [("seq/a/kernel", MaxNorm(2.0, axis=0)), ("seq/b/bias", NonNeg())]
    assert regularizer_rules == [("seq/a/kernel", L2(0.01)), ("seq/b/bias", L1(0.5))]
    with keras_context():
        model(np.ones((2, 5), np.float32))
        keras_loss = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
    ours = float(jaxcons.penalty(params_of(model), regularizer_rules))
    np.testing.assert_allclose(ours, keras_loss, rtol=1e-6)


def test_penalty_of_the_rules_is_keras_model_losses(net):
    model = net
    _, regularizer_rules = jaxcons.keras.rules_from_model(model)
    for i, v in enumerate(model.trainable_variables):
        v.assign(spread_tensor(tuple(v.shape), seed=20 + i))
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype(np.float32)
    with keras_context():
        model(x)
        losses = [float(keras.ops.convert_to_numpy(loss)) for loss in model.losses]
    # One loss per trainable regularized variable: the frozen layer's and the non-trainable
    # weight's regularizers are not among them, in Keras as in the rules.
    assert len(losses) == len(EXPECTED_REGULARIZERS)
    ours = float(jaxcons.penalty(params_of(model), regularizer_rules))
    np.testing.assert_allclose(ours, sum(losses), rtol=1e-6)
    assert ours > 0


def test_constraint_rules_project_as_keras_variables_constraints(net):
    model = net
    constraint_rules, _ = jaxcons.keras.rules_from_model(model)
    # Out-of-bounds values, away from zero norms: both sides of every bound.
    for i, v in enumerate(model.trainable_variables):
        v.assign(spread_tensor(tuple(v.shape), seed=i) * 2.0)
    params = params_of(model)
    projected = jaxcons.apply_constraints(params, constraint_rules)
    constrained = {path for path, _ in constraint_rules}
    for v in model.trainable_variables:
        ours = np.asarray(projected[v.path])
        if v.path in constrained:
            theirs = np.asarray(keras.ops.convert_to_numpy(v.constraint(v.value)))
            assert not np.array_equal(theirs, np.asarray(v.value)), v.path  # It binds.
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=0, err_msg=v.path)
        else:
            assert v.constraint is None
            np.testing.assert_array_equal(ours, np.asarray(v.value))
    # The exact projections leave nothing to project (MinMaxNorm with rate < 1 only moves
    # halfway, and a unit vector's float32 norm may be an ulp off 1).
    violations = jaxcons.violations(projected, constraint_rules)
    for path in ("conv/kernel", "conv/bias", "scale/w"):
        assert float(violations[path]) == 0.0, path


def test_one_jax_loop_step_with_the_rules_is_keras_train_on_batch(net):
    """SGD with the model's rules in jaxcons.chain, the loss by model.stateless_call: the
    parameters Keras's train_on_batch gives (update with the penalty's gradient, then each
    variable's constraint)."""
    model = net
    constraint_rules, regularizer_rules = jaxcons.keras.rules_from_model(model)
    for i, v in enumerate(model.trainable_variables):
        v.assign(spread_tensor(tuple(v.shape), seed=10 + i))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6, 6, 2)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    lr = 0.05

    variables = model.trainable_variables
    params = params_of(model)
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_fn(params):
        outputs, _ = model.stateless_call([params[v.path] for v in variables], non_trainable, x)
        return jnp.mean(jnp.square(outputs - y))

    tx = jaxcons.chain(optax.sgd(lr), constraints=constraint_rules, regularizers=regularizer_rules)
    with keras_context():
        grads = jax.jit(jax.grad(loss_fn))(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        ours = optax.apply_updates(params, updates)
        model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
        model.train_on_batch(x, y)
    for v in variables:
        np.testing.assert_allclose(
            np.asarray(ours[v.path]), np.asarray(v.value), rtol=1e-5, atol=1e-6, err_msg=v.path
        )


def test_paths_with_glob_metacharacters_get_exact_patterns():
    class Star(keras.layers.Layer):
        def build(self, input_shape):
            self.a = self.add_weight(shape=(2,), name="w*", constraint=kc.NonNeg())
            self.b = self.add_weight(shape=(2,), name="wx", initializer="ones")

        def call(self, x):
            return x

    layer = Star(name="star")
    layer.build((2,))
    constraint_rules, _ = jaxcons.keras.rules_from_model(layer)
    assert constraint_rules == [("re:star/w\\*", NonNeg())]
    params = {"star/w*": -jnp.ones(2), "star/wx": -jnp.ones(2)}
    out = jaxcons.apply_constraints(params, constraint_rules)
    np.testing.assert_array_equal(out["star/w*"], np.zeros(2, np.float32))
    np.testing.assert_array_equal(out["star/wx"], -np.ones(2, np.float32))  # Not 'star/w*'.


def test_activity_regularizers_are_an_error_unless_ignored():
    with keras_context():
        model = keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(
                    2, name="act", activity_regularizer="l2", kernel_constraint="non_neg"
                ),
                keras.layers.ActivityRegularization(l1=0.1, name="reg"),
            ],
            name="acts",
        )
    with pytest.raises(
        ValueError,
        match=r"Sequential 'acts' has activity regularizers \(layers 'act', 'reg'\): they act on "
        r"outputs.*jaxcons\.activity_penalty.*ignore_activity=True",
    ):
        jaxcons.keras.rules_from_model(model)
    constraint_rules, regularizer_rules = jaxcons.keras.rules_from_model(
        model, ignore_activity=True
    )
    assert constraint_rules == [("acts/act/kernel", NonNeg())]
    assert regularizer_rules == []
    # What the message says to do: the Keras activity regularizer, converted.
    assert jaxcons.keras.from_keras(model.get_layer("act").activity_regularizer) == L2(0.01)


def test_rules_from_model_errors():
    with pytest.raises(TypeError, match=r"expects a Keras 3 model or layer, got \{\} of type dict"):
        jaxcons.keras.rules_from_model({})
    unbuilt = keras.Sequential([keras.layers.Dense(2)], name="unbuilt")
    with pytest.raises(ValueError, match=r"Sequential 'unbuilt' has no trainable variables: "):
        jaxcons.keras.rules_from_model(unbuilt)
    with keras_context():
        custom = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(2, name="d", kernel_constraint=CenterAround())],
            name="custom",
        )
        function = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(2, name="d", bias_regularizer=jnp.sum)],
            name="function",
        )
    with pytest.raises(
        ValueError,
        match=r"The constraint of Keras variable 'custom/d/kernel': jaxcons\.keras\.from_keras: "
        r".*CenterAround.* has no jaxcons equivalent",
    ):
        jaxcons.keras.rules_from_model(custom)
    with pytest.raises(
        ValueError, match=r"The regularizer of Keras variable 'function/d/bias': .*no jaxcons"
    ):
        jaxcons.keras.rules_from_model(function)
    with pytest.raises(ValueError, match=r"ignore_activity must be True or False, got 'yes'"):
        jaxcons.keras.rules_from_model(custom, ignore_activity="yes")


def test_two_variables_with_one_path_are_an_error():
    class Twice(keras.layers.Layer):
        def build(self, input_shape):
            self.a = self.add_weight(shape=(2,), name="w")
            self.b = self.add_weight(shape=(2,), name="w")

        def call(self, x):
            return x

    layer = Twice(name="twice")
    layer.build((2,))
    with pytest.raises(
        ValueError,
        match=r"Two trainable variables of Twice 'twice' have the path 'twice/w': a dict keyed by "
        r"path would keep only one",
    ):
        jaxcons.keras.rules_from_model(layer)


def test_a_keras_config_key_jaxcons_does_not_know_is_an_error():
    # As a later Keras might write it: a MaxNorm whose config has a key jaxcons has no use for.
    constraint = kc.MaxNorm(2.0)
    constraint.get_config = lambda: {"max_value": 2.0, "axis": 0, "epsilon": 1e-7}
    with pytest.raises(
        ValueError,
        match=r"keras MaxNorm with config \{.*'epsilon': 1e-07\} has no valid jaxcons MaxNorm: "
        r".*unexpected keyword argument 'epsilon'",
    ):
        jaxcons.keras.from_keras(constraint)

"""Nothing silent: every way of misusing a constraint that used to pass quietly now raises."""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcons
import jaxcons.flax


def _params():
    return {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}


# --- outputs are checked -------------------------------------------------------------------------


def test_a_callable_that_changes_the_shape_is_an_error():
    msg = (
        "for parameter 'k' returned an array of shape (2,) and dtype float32, but the parameter "
        "has shape (3,) and dtype float32"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.apply_constraints({"k": jnp.ones(3)}, {"k": lambda w: w[:2]})
    tx = optax.chain(optax.sgd(1.0), jaxcons.constrain({"k": lambda w: w[:2]}))
    params = {"k": jnp.ones(3)}
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.update({"k": jnp.ones(3)}, tx.init(params), params)


def test_a_callable_that_returns_integers_is_an_error():
    def rounds(w):
        return jnp.round(w).astype(jnp.int32)

    msg = "returned an array of shape (3,) and dtype int32, but the parameter has shape (3,) and"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.apply_constraints({"k": jnp.ones(3)}, {"k": rounds})


def test_a_subclass_that_upcasts_bf16_is_an_error_under_jit():
    class Upcast(jaxcons.Constraint):
        def __call__(self, w):
            return w.astype(jnp.float32)

    params = {"k": jnp.ones(3, jnp.bfloat16)}
    tx = jaxcons.constrain({"k": Upcast()})
    step = jax.jit(lambda u, s, p: tx.update(u, s, p))
    with pytest.raises(ValueError, match=r"The constraint Upcast\(\) for parameter 'k'.*float32"):
        step(params, tx.init(params), params)


def test_project_must_return_a_pair_and_keep_its_state_structure():
    class NoPair(jaxcons.Constraint):
        def project(self, w, state):
            return w

    class Grows(jaxcons.StatefulConstraint):
        def init(self, w):
            return (jnp.zeros(()),)

        def project(self, w, state):
            return w, (*state, jnp.zeros(()))

    params = {"k": jnp.ones(2)}
    for c, msg in [
        (NoPair(), "NoPair.project for parameter 'k' must return a pair (projected w, new state)"),
        (Grows(), "Grows.project for parameter 'k' changed the structure of its state"),
    ]:
        tx = jaxcons.constrain({"k": c})
        with pytest.raises(ValueError, match=re.escape(msg)):
            tx.update(params, tx.init(params), params)


def test_a_stateful_constraint_without_init_fails_at_init():
    class Half(jaxcons.StatefulConstraint):
        pass

    with pytest.raises(
        TypeError,
        match=r"Half subclasses jaxcons.StatefulConstraint but "
        r"defines no init\(\)",
    ):
        jaxcons.constrain({"k": Half()}).init({"k": jnp.ones(2)})


def test_a_prox_that_changes_the_shape_is_an_error():
    class BadProx(jaxcons.Regularizer):
        def __call__(self, x):
            return jnp.sum(x)

        def prox(self, x, step):
            return x.sum()

    tx = jaxcons.proximal({"k": BadProx()}, 0.1)
    params = {"k": jnp.ones(2)}
    msg = "The proximal operator of BadProx() for parameter 'k' returned an array of shape ()"
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.update(params, tx.init(params), params)


# --- kinds are checked ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "use",
    [
        lambda rules: jaxcons.constrain(rules),
        lambda rules: jaxcons.apply_constraints(_params(), rules),
        lambda rules: jaxcons.flax.TrainState.create(
            apply_fn=None, params=_params(), tx=optax.sgd(0.1), constraints=rules
        ),
        lambda rules: jaxcons.chain(optax.sgd(0.1), constraints=rules),
    ],
)
def test_a_regularizer_where_a_constraint_belongs_is_a_type_error(use):
    msg = "L2(l2=0.0001) is a regularizer, not a constraint: it belongs in regularizer rules"
    with pytest.raises(TypeError, match=re.escape(msg)):
        use({"**/kernel": jaxcons.L2(1e-4)})


def test_a_constraint_where_a_regularizer_belongs_is_a_type_error():
    msg = "NonNeg() is a constraint, not a regularizer: it belongs in constraint rules"
    with pytest.raises(TypeError, match=re.escape(msg)):
        jaxcons.penalty(_params(), {"**/bias": jaxcons.NonNeg()})
    with pytest.raises(TypeError, match=re.escape(msg)):
        jaxcons.regularize({"**/bias": jaxcons.NonNeg()})


def test_a_name_of_the_other_kind_says_so():
    msg = "'l2' names a regularizer, not a constraint: it belongs in regularizer rules."
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.constraints.get("l2")
    msg = "'non_neg' names a constraint, not a regularizer"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.regularizers.get("non_neg")


def test_a_name_whose_class_needs_arguments_says_so():
    with pytest.raises(ValueError, match=r"The constraint identifier 'clip' needs arguments"):
        jaxcons.constraints.get("clip")


# --- grads structured unlike the params ----------------------------------------------------------


def test_grads_in_a_frozen_dict_get_a_jaxcons_message():
    params = _params()
    grads = flax.core.freeze(jax.tree.map(jnp.ones_like, params))
    tx = jaxcons.constrain({"**/bias": jaxcons.NonNeg()})
    msg = (
        "jaxcons.constrain: the updates do not have the structure of the params (at the top "
        "level the params have a dict, the updates a FrozenDict)"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.update(grads, tx.init(params), params)


def test_grads_missing_a_key_name_where():
    params = _params()
    grads = {"Dense_0": {"kernel": jnp.ones((3, 2))}}
    tx = jaxcons.regularize({"**/kernel": jaxcons.L2(0.1)})
    msg = (
        "at 'Dense_0' the params have children [DictKey(key='bias'), DictKey(key='kernel')], "
        "the updates [DictKey(key='kernel')]"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        tx.update(grads, tx.init(params), params)


# --- bf16 boxes round inward ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_clip_bounds_round_inward_for_narrow_floats(dtype):
    w = jnp.linspace(-1.0, 1.0, 257).astype(dtype)
    out = np.asarray(jaxcons.Clip(-0.3, 0.3)(w), np.float64)
    assert out.max() <= 0.3 and out.min() >= -0.3
    # The bound itself is the largest value of the dtype not above 0.3.
    top = float(np.asarray(0.3, dtype))
    expected = (
        top if top <= 0.3 else float(np.nextafter(np.asarray(0.3, dtype), np.asarray(0, dtype)))
    )
    assert out.max() == expected
    # Through constrain, from a feasible start, with float32 updates.
    params = {"w": jnp.zeros(257, dtype)}
    tx = jaxcons.constrain({"w": jaxcons.Clip(0.0, 0.3)})
    updates, _ = tx.update({"w": jnp.linspace(-1, 1, 257)}, tx.init(params), params)
    with jax.numpy_dtype_promotion("standard"):
        new = np.asarray(optax.apply_updates(params, updates)["w"], np.float64)
    assert new.max() <= 0.3 and new.min() >= 0.0


def test_float32_bounds_round_inward_like_narrow_ones():
    # float32's nearest value to 0.3 lies above it; the clip lands on the one just below.
    out = jaxcons.Clip(0.0, 0.3)(jnp.ones(1))
    below = np.nextafter(np.float32(0.3), np.float32(0.0))
    assert out.dtype == jnp.float32 and float(out[0]) == float(below) and float(out[0]) <= 0.3


def test_a_constraint_whose_hook_is_misnamed_cannot_be_built():
    # Keras layers name their hook `call`; here that would be a silent identity, which
    # jaxcons.violations would then report as 0.0 on every parameter.
    class Halve(jaxcons.Constraint):
        def call(self, w):
            return w / 2

    with pytest.raises(
        TypeError,
        match=r"Halve subclasses jaxcons.Constraint but defines no __call__\(self, w\) or "
        r"project\(self, w, state\), so it would leave every parameter unchanged .* It defines "
        r"'call': the hook is __call__",
    ):
        Halve()


def test_a_stateful_constraint_without_project_cannot_be_built():
    class Counter(jaxcons.StatefulConstraint):
        def init(self, w):
            return jnp.zeros((), jnp.int32)

    with pytest.raises(
        TypeError,
        match=r"Counter subclasses jaxcons.StatefulConstraint but defines no project\(\), so it "
        r"would have no per-step projection",
    ):
        Counter()


def test_a_regularizer_without_call_cannot_be_built():
    class OnlyProx(jaxcons.Regularizer):
        def prox(self, x, step):
            return x

    with pytest.raises(
        TypeError,
        match=r"OnlyProx subclasses jaxcons.Regularizer but defines no __call__\(self, x\), so it "
        r"would add nothing to the loss\. It defines 'prox'",
    ):
        OnlyProx()


def test_a_constraint_with_only_project_projects_when_called():
    # `project` alone is enough: a direct call is one step from `init`'s state.
    class Floor(jaxcons.Constraint):
        def project(self, w, state):
            return jnp.maximum(w, jnp.zeros((), w.dtype)), state

    np.testing.assert_array_equal(Floor()(jnp.array([-1.0, 2.0])), [0.0, 2.0])
    params = {"w": jnp.array([-1.0, 2.0])}
    assert float(jaxcons.violations(params, {"w": Floor()})["w"]) == 1.0


def test_a_parameter_reshaped_between_init_and_update_is_named(adam):
    tx = jaxcons.chain(adam(0.1), constraints={"w": jaxcons.MaxNorm(1.0)})
    state = tx.init({"w": jnp.ones((4, 3)), "b": jnp.ones(3)})
    params = {"w": jnp.ones((5, 3)), "b": jnp.ones(3)}
    with pytest.raises(
        ValueError,
        match=r"jaxcons.chain: parameter 'w' has shape \(5, 3\), but the optimizer state was "
        r"initialised for shape \(4, 3\)\. A parameter whose shape changes needs a new "
        r"optimizer state: state = tx.init\(params\)\.",
    ):
        tx.update(params, state, params)


def test_updates_of_another_shape_than_the_params_are_named(adam):
    tx = jaxcons.chain(adam(0.1), constraints={"w": jaxcons.MaxNorm(1.0)})
    params = {"w": jnp.ones((4, 3))}
    state = tx.init(params)
    with pytest.raises(
        ValueError,
        match=r"jaxcons.chain: the update of parameter 'w' has shape \(3, 4\), but the parameter "
        r"has shape \(4, 3\)",
    ):
        tx.update({"w": jnp.ones((3, 4))}, state, params)


def test_a_stateful_constraint_state_from_another_shape_is_named():
    tx = jaxcons.constrain({"w": jaxcons.SpectralNorm(1.0)})
    old = tx.init({"w": jnp.eye(4, 3)})
    params = {"w": jnp.eye(4, 5)}
    with pytest.raises(
        ValueError,
        match=r"jaxcons.constrain: the state of SpectralNorm\(.*\) for parameter 'w' \(shapes "
        r"\[\(3,\)\]\) was not made for a parameter of shape \(4, 5\) and dtype float32 \(its "
        r"init makes shapes \[\(5,\)\]\)\. A parameter whose shape changes needs a new optimizer "
        r"state",
    ):
        tx.update({"w": jnp.zeros((4, 5))}, old, params)


def test_chain_of_multisteps_says_how_to_combine_them():
    with pytest.raises(
        TypeError,
        match=r"jaxcons.chain needs an optax.GradientTransformation as its first argument, got "
        r".*MultiSteps.*is not one itself: wrap the whole chain, optax.MultiSteps\(jaxcons.chain"
        r"\(opt, \.\.\.\), every_k_schedule=k\)\.gradient_transformation\(\)",
    ):
        jaxcons.chain(optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2))


def test_frozen_dict_params_with_dict_grads_through_chain_get_jaxcons_message(adam):
    params = flax.core.freeze({"dense": {"kernel": jnp.ones((2, 2))}})
    tx = jaxcons.chain(adam(0.1), constraints={"**/kernel": jaxcons.MaxNorm(1.0)})
    state = tx.init(params)
    grads = {"dense": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(
        ValueError,
        match=r"jaxcons.chain: the updates do not have the structure of the params \(at the top "
        r"level the params have a FrozenDict, the updates a dict\)",
    ):
        tx.update(grads, state, params)

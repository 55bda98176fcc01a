"""Path patterns and rule resolution: globs, regexes, callables, ordering, strictness, caching."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcons
from jaxcons import Rules


def _matches(pattern, path, leaf=1.0):
    """Whether ``pattern`` matches a leaf at ``path`` (a dict key holding '/' spells it)."""
    return jaxcons.mask({path: leaf}, pattern, strict=False)[path]


def _params():
    return {
        "params": {
            "Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
            "Block_1": {"Dense_0": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}},
        },
        "step": jnp.zeros((), jnp.int32),
    }


def _governed(rules, tree, **kwargs):
    """``{path: value}`` for every leaf a rule acts on."""
    resolution = Rules(rules, **kwargs).resolve(tree)
    return {path: value for _, path, value in resolution.active()}


# --- globs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("params/Dense_0/kernel", "params/Dense_0/kernel", True),
        ("params/Dense_0/kernel", "params/Dense_0/kernel2", False),
        ("params/*/kernel", "params/Dense_0/kernel", True),
        ("params/*/kernel", "params/Block_1/Dense_0/kernel", False),  # `*` stays in a segment
        ("params/*", "params/Dense_0/kernel", False),
        ("*kernel", "params/kernel", False),
        ("Dense_*", "Dense_0", True),
        ("Dense_*", "Dense_", True),
        ("*", "kernel", True),
        ("**/kernel", "kernel", True),  # `**` matches zero segments
        ("**/kernel", "params/Block_1/Dense_0/kernel", True),
        ("**/kernel", "params/Dense_0/kernel_1", False),
        ("**/kernel", "params/Dense_0/my_kernel", False),
        ("params/**/kernel", "params/kernel", True),
        ("params/**/kernel", "params/a/b/c/kernel", True),
        ("params/**/kernel", "other/params/a/kernel", False),
        ("params/**", "params", True),
        ("params/**", "params/a/b", True),
        ("params/**", "paramsX/a", False),
        ("**", "", True),
        ("**", "a/b/c", True),
        ("**/**", "a/b", True),
        ("**/**", "a", True),
        ("params/**/**", "params/a/b", True),
        ("params/**/**", "params", True),
        ("**/**/kernel", "kernel", True),
        ("**/**/kernel", "a/b/kernel", True),
        ("layers/?/kernel", "layers/3/kernel", True),
        ("layers/?/kernel", "layers/12/kernel", False),
        ("a?b", "a/b", False),  # `?` never matches the separator
        ("Dense_0.kernel", "Dense_0xkernel", False),  # glob text is literal, not a regex
        ("a+b", "a+b", True),
        ("(x)", "(x)", True),
    ],
)
def test_glob_matching(pattern, path, expected):
    assert _matches(pattern, path) is expected


def test_globs_match_the_whole_path():
    assert _matches("**/kernel", "a/kernel")
    assert not _matches("**/kernel", "a/kernel/b")


_segment = st.text(alphabet="abcXYZ_019.+()[]$^", min_size=1, max_size=6)
_path = st.lists(_segment, min_size=1, max_size=5).map("/".join)


@settings(max_examples=25, deadline=None)
@given(_path, _path)
def test_literal_glob_matches_only_itself(path, other):
    assert _matches(path, path)
    assert _matches(path, other) is (path == other)


@settings(max_examples=25, deadline=None)
@given(st.lists(_segment, min_size=1, max_size=5))
def test_double_star_prefix_matches_any_depth(segments):
    path = "/".join(segments)
    assert _matches("**", path)
    assert _matches("**/" + segments[-1], path)
    assert _matches(segments[0] + "/**", path)
    assert _matches("/".join(["*"] * len(segments)), path)
    assert not _matches("/".join(["*"] * (len(segments) + 1)), path)


# --- regexes and callables ----------------------------------------------------------------------


def test_regex_is_a_full_match_not_a_search():
    assert _matches(r"re:params/Dense_\d+/kernel", "params/Dense_12/kernel")
    assert not _matches(r"re:Dense_\d+/kernel", "params/Dense_0/kernel")  # search would match
    assert not _matches("re:kern", "kernel")
    assert _matches("re:.*kernel", "params/Dense_0/kernel")
    assert _matches("re:(kernel|bias)", "bias")
    assert not _matches("re:kernel|bias", "kernel_2")  # alternation is anchored as a whole


def test_callable_pattern_gets_path_and_leaf():
    calls = []

    def two_dimensional(path, leaf):
        calls.append((path, leaf.shape))
        return leaf.ndim == 2

    governed = _governed({two_dimensional: "c"}, _params())
    assert sorted(governed) == ["params/Block_1/Dense_0/kernel", "params/Dense_0/kernel"]
    assert ("params/Dense_0/bias", (4,)) in calls


def test_callable_pattern_result_is_used_as_truth_value():
    governed = _governed({lambda p, leaf: np.bool_(p.endswith("bias")): "c"}, _params())
    assert sorted(governed) == ["params/Block_1/Dense_0/bias", "params/Dense_0/bias"]


def test_pattern_descriptions():
    def is_kernel(path, leaf):
        return path.endswith("kernel")

    rules = Rules([("**/kernel", 1), ("re:.*", 2), (is_kernel, 3), (lambda p, leaf: True, 4)])
    assert repr(rules) == (
        "Rules({'**/kernel': 1, 're:.*': 2, '<callable is_kernel>': 3, "
        "'<callable <lambda>>': 4}, strict=True)"
    )


# --- malformed patterns -------------------------------------------------------------------------


def test_empty_pattern_is_rejected():
    msg = "A path pattern must be a non-empty string, got ''."
    with pytest.raises(ValueError, match=re.escape(msg)):
        Rules({"": "c"})


@pytest.mark.parametrize("pattern", ["a**b", "**kernel", "params/Dense**"])
def test_double_star_inside_a_segment_is_rejected(pattern):
    seg = next(s for s in pattern.split("/") if "**" in s)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"Invalid path pattern {pattern!r}: '**' must be a whole segment (as in "
            f"'**/kernel'), found it inside segment {seg!r}."
        ),
    ):
        Rules({pattern: "c"})


def test_bad_regex_is_rejected():
    with pytest.raises(
        ValueError, match=r"Path pattern 're:\(unclosed' is not a valid regular expression: "
    ):
        Rules({"re:(unclosed": "c"})


def test_empty_regex_is_rejected():
    msg = "Path pattern 're:' has an empty regular expression."
    with pytest.raises(ValueError, match=re.escape(msg)):
        Rules({"re:": "c"})


@pytest.mark.parametrize(
    ("pattern", "type_name"), [(3, "int"), (b"kernel", "bytes"), (None, "NoneType")]
)
def test_non_string_non_callable_pattern_is_rejected(pattern, type_name):
    with pytest.raises(
        TypeError,
        match=re.escape(
            "A path pattern must be a glob string, a 're:' regex string, or a callable "
            f"(path, leaf) -> bool; got {pattern!r} of type {type_name}."
        ),
    ):
        Rules([(pattern, "c")])


# --- rule containers -------------------------------------------------------------------------


@pytest.mark.parametrize("rules", [jaxcons.NonNeg(), "**/kernel", 3, b"ab"])
def test_non_mapping_rules_are_a_type_error(rules):
    with pytest.raises(
        TypeError,
        match=re.escape(
            "constraint rules must be a mapping {pattern: constraint} or a sequence of "
            f"(pattern, constraint) pairs; got {rules!r} of type {type(rules).__name__}. "
            "To cover every parameter, use {'**': ...}."
        ),
    ):
        Rules(rules, kind="constraint")


@pytest.mark.parametrize("item", [("**/kernel",), ("a", "b", "c"), "ab"])
def test_malformed_rule_pairs_are_a_type_error(item):
    with pytest.raises(
        TypeError,
        match=re.escape(f"constraint rule #1 must be a (pattern, constraint) pair, got {item!r}."),
    ):
        Rules([("**/bias", "c"), item], kind="constraint")


def test_strict_must_be_a_bool():
    with pytest.raises(TypeError, match=re.escape("strict must be a bool, got 'yes'.")):
        Rules({"**": "c"}, strict="yes")


def test_sequence_of_pairs_and_lists_are_accepted():
    governed = _governed([("**/kernel", "k"), ["**/bias", "b"]], _params())
    assert governed == {
        "params/Block_1/Dense_0/bias": "b",
        "params/Block_1/Dense_0/kernel": "k",
        "params/Dense_0/bias": "b",
        "params/Dense_0/kernel": "k",
    }


def test_coerce_runs_once_per_value_at_construction():
    seen = []
    rules = Rules({"**/kernel": 1, "**/bias": None}, coerce=lambda v: seen.append(v) or v * 10)
    assert seen == [1]
    assert _governed(rules, _params()) == {
        "params/Block_1/Dense_0/kernel": 10,
        "params/Dense_0/kernel": 10,
    }


def test_copying_rules_recoerces_values():
    named = Rules({"**/kernel": "k", "**/bias": None})
    copied = Rules(named, coerce=str.upper, strict=False, kind="constraint")
    assert [r.value for r in copied.entries] == ["K", None]
    assert copied.strict is False
    assert copied.kind == "constraint"
    assert [r.value for r in named.entries] == ["k", None]


def test_len_and_repr():
    rules = Rules({"**/kernel": "k", "**/bias": None}, strict=False)
    assert len(rules) == 2
    assert repr(rules) == "Rules({'**/kernel': 'k', '**/bias': None}, strict=False)"


# --- first match wins -------------------------------------------------------------------------


def test_first_match_wins_in_a_mapping():
    rules = {"params/Block_1/**/kernel": "special", "**/kernel": "generic"}
    governed = _governed(rules, _params())
    assert governed["params/Block_1/Dense_0/kernel"] == "special"
    assert governed["params/Dense_0/kernel"] == "generic"
    # The same rules in the other order: the generic rule shadows the specific one, which
    # would never act. Strict says so, naming both; non-strict lets the generic one win.
    reordered = dict(reversed(list(rules.items())))
    msg = (
        "value rule 'params/Block_1/**/kernel' never acts: every parameter it matches is "
        "already claimed by the earlier rule '**/kernel' (e.g. 'params/Block_1/Dense_0/kernel')"
        ", and the first matching rule wins. Put the more specific rule "
        "'params/Block_1/**/kernel' first"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        _governed(reordered, _params())
    assert set(_governed(reordered, _params(), strict=False).values()) == {"generic"}


@pytest.mark.parametrize("strict", [True, False])
def test_first_match_wins_in_a_sequence(strict):
    rules = [("**/Dense_0/*", "dense"), ("**/bias", None), ("**", "rest")]
    params = {**_params(), "head": {"bias": jnp.zeros(2), "kernel": jnp.ones(2)}}
    resolution = Rules(rules, strict=strict).resolve(params)
    assert resolution.paths == (
        "head/bias",
        "head/kernel",
        "params/Block_1/Dense_0/bias",
        "params/Block_1/Dense_0/kernel",
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
        "step",
    )
    assert resolution.values == (None, "rest", "dense", "dense", "dense", "dense", None)


def test_none_value_exempts_leaves_from_a_later_broad_rule():
    rules = {"params/Block_1/**": None, "**": "all"}
    governed = _governed(rules, _params())
    assert governed == {"params/Dense_0/bias": "all", "params/Dense_0/kernel": "all"}
    resolution = Rules(rules).resolve(_params())
    assert resolution.values[:2] == (None, None)


def test_unmatched_leaves_are_left_alone():
    assert _governed({"**/kernel": "k"}, _params()) == {
        "params/Block_1/Dense_0/kernel": "k",
        "params/Dense_0/kernel": "k",
    }


# --- floating leaves only ----------------------------------------------------------------------


def test_only_floating_leaves_are_governed():
    tree = {
        "f32": jnp.ones(2),
        "bf16": jnp.ones(2, jnp.bfloat16),
        "f16": np.ones(2, np.float16),
        "py_float": 1.0,
        "i32": jnp.ones(2, jnp.int32),
        "u8": np.ones(2, np.uint8),
        "py_int": 3,
        "py_bool": True,
        "bool": jnp.ones(2, bool),
        "masked": optax.MaskedNode(),
        "none": None,
    }
    governed = _governed({"**": "c"}, tree)
    assert sorted(governed) == ["bf16", "f16", "f32", "py_float"]


@pytest.mark.parametrize(
    ("leaf", "expected"),
    [
        (jnp.ones(1), True),
        (jnp.ones(1, jnp.bfloat16), True),
        (np.float64(1.0), True),
        (1.5, True),
        (jax.ShapeDtypeStruct((2,), jnp.float32), True),
        (jnp.ones(1, jnp.int8), False),
        (jnp.ones(1, jnp.complex64), False),
        (1, False),
        (True, False),
        (None, False),
        ("text", False),
        (optax.MaskedNode(), False),
    ],
)
def test_which_leaves_count_as_floating(leaf, expected):
    governed = _governed({"**": "c"}, {"x": leaf, "y": jnp.ones(1)}, strict=False)
    assert ("x" in governed) is expected


def test_int_leaves_pass_through_apply_constraints():
    tree = {"w": jnp.array([-1.0, 1.0]), "step": jnp.array([-3, 3], jnp.int32)}
    out = jaxcons.apply_constraints(tree, {"**": jaxcons.NonNeg()})
    np.testing.assert_array_equal(out["w"], np.array([0.0, 1.0], np.float32))
    assert out["step"] is tree["step"]


def test_masked_leaves_are_not_governed_and_do_not_count_as_matches():
    tree = {"kernel": optax.MaskedNode(), "bias": jnp.zeros(2)}
    resolution = Rules({"bias": "b", "**": "any"}, strict=False).resolve(tree)
    assert [(i, p, v) for i, p, v in resolution.active()] == [(0, "bias", "b")]
    # A rule that reaches only masked-out leaves would never act: strict says so.
    msg = (
        "constraint rule 'kernel' matches no parameter: it matches only leaves that are masked "
        "out by optax.masked, or not floating-point arrays (kernel (masked))"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        Rules({"kernel": "k", "bias": "b"}, kind="constraint").resolve(tree)


def test_callable_patterns_never_see_masked_leaves():
    seen = []

    def is_matrix(path, leaf):
        seen.append(type(leaf).__name__)
        return leaf.ndim == 2

    params = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
    tx = optax.masked(
        optax.chain(optax.sgd(1.0), jaxcons.constrain([(is_matrix, jaxcons.MaxNorm(1.0))])),
        {"k": True, "b": False},
    )
    state = tx.init(params)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(new["k"]), axis=0), 1.0, rtol=1e-6)
    assert "MaskedNode" not in seen


# --- strict errors ----------------------------------------------------------------------------


def test_typo_raises_naming_the_pattern_and_the_closest_paths():
    with pytest.raises(ValueError) as info:
        Rules({"**/kernel": "k", "params/Dense_0/kernal": "typo"}, kind="constraint").resolve(
            _params()
        )
    assert str(info.value) == (
        "constraint rule 'params/Dense_0/kernal' matches no parameter. Closest paths: "
        "'params/Dense_0/kernel', 'params/Dense_0/bias', 'params/Block_1/Dense_0/kernel'. "
        "Fix the pattern, or pass strict=False to allow rules that match nothing."
    )


def test_unmatched_regex_uses_its_source_to_find_close_paths():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "value rule 're:step_\\\\d' matches no parameter. Closest paths: 'step_x', 'other'."
        ),
    ):
        Rules({"re:step_\\d": "c"}).resolve({"other": jnp.ones(1), "step_x": jnp.ones(1)})


def test_unmatched_callable_shows_the_first_paths():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "value rule '<callable never>' matches no parameter. Closest paths: "
            "'params/Block_1/Dense_0/bias', 'params/Block_1/Dense_0/kernel', "
            "'params/Dense_0/bias'."
        ),
    ):

        def never(path, leaf):
            return False

        Rules({never: "c"}).resolve(_params())


def test_rule_matching_only_int_leaves_names_them():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "constraint rule '**/step' matches no parameter: it matches only leaves that are not "
            "floating-point arrays (step (int32)), which a constraint never acts on. Fix the "
            "pattern, or pass strict=False"
        ),
    ):
        Rules({"**/step": "c"}, kind="constraint").resolve(_params())


def test_empty_tree_message():
    with pytest.raises(
        ValueError,
        match=re.escape("value rule '**' matches no parameter (the tree has no leaves)."),
    ):
        Rules({"**": "c"}).resolve({})


def test_strict_false_allows_unmatched_rules():
    governed = _governed({"nothing/here": "x", "**/bias": "b"}, _params(), strict=False)
    assert sorted(governed) == ["params/Block_1/Dense_0/bias", "params/Dense_0/bias"]


def test_fully_shadowed_rule_is_an_error_unless_not_strict():
    # `**/kernel` claims every kernel first: the later specific rule would never act.
    rules = {"**/kernel": "k", "params/Dense_0/kernel": "never used"}
    msg = (
        "constraint rule 'params/Dense_0/kernel' never acts: every parameter it matches is "
        "already claimed by the earlier rule '**/kernel' (e.g. 'params/Dense_0/kernel')"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        Rules(rules, kind="constraint").resolve(_params())
    assert set(_governed(rules, _params(), strict=False).values()) == {"k"}


def test_the_issue_example_of_a_shadowed_rule_raises_through_constrain():
    params = {"Dense_0": {"kernel": jnp.ones((2, 2))}, "Dense_1": {"kernel": jnp.ones((2, 2))}}
    rules = {"**/kernel": jaxcons.MaxNorm(3.0), "Dense_1/kernel": jaxcons.MaxNorm(1.0)}
    with pytest.raises(ValueError, match=r"rule 'Dense_1/kernel' never acts.*'\*\*/kernel'"):
        jaxcons.constrain(rules).init(params)
    # Put first, the specific rule acts and the broad one still governs Dense_0.
    fixed = {"Dense_1/kernel": jaxcons.MaxNorm(1.0), "**/kernel": jaxcons.MaxNorm(3.0)}
    out = jaxcons.apply_constraints(
        {k: {"kernel": 10 * v["kernel"]} for k, v in params.items()}, fixed
    )
    np.testing.assert_allclose(np.linalg.norm(out["Dense_1"]["kernel"], axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out["Dense_0"]["kernel"], axis=0), 3.0, rtol=1e-6)


def test_a_partly_shadowed_rule_is_fine():
    # `**/bias` loses Dense_0/bias to the first rule but still governs the block's bias.
    governed = _governed({"params/Dense_0/*": "d", "**/bias": "b"}, _params())
    assert governed["params/Block_1/Dense_0/bias"] == "b"
    assert governed["params/Dense_0/bias"] == "d"


def test_a_module_pattern_suggests_its_parameters():
    msg = (
        "constraint rule 'params/Dense_0' matches no parameter: 'params/Dense_0' names a "
        "module, not a parameter. To cover its parameters, use 'params/Dense_0/**'."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.apply_constraints(_params(), {"params/Dense_0": jaxcons.NonNeg()})


def test_colliding_paths_are_an_error_when_governed():
    tree = {"a/b": jnp.ones((3, 3)), "a": {"b": jnp.ones((2, 2))}, "c": jnp.ones(1)}
    assert jaxcons.paths(tree) == ["a/b", "a/b", "c"]
    msg = "Two parameters have the same path 'a/b'"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.constrain({"a/b": jaxcons.SpectralNorm(1.0)}).init(tree)
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.penalties(tree, {"a/b": jaxcons.L2(0.1)})
    # Leaves no rule governs may share a path: nothing is keyed by it.
    assert jaxcons.penalties(tree, {"c": jaxcons.L2(1.0)}) == {"c": 1.0}


def test_strict_errors_surface_through_constrain_and_apply_constraints():
    params = _params()
    msg = "constraint rule '**/kernal' matches no parameter"
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.apply_constraints(params, {"**/kernal": jaxcons.NonNeg()})
    with pytest.raises(ValueError, match=re.escape(msg)):
        jaxcons.constrain({"**/kernal": jaxcons.NonNeg()}).init(params)
    out = jaxcons.apply_constraints(params, {"**/kernal": jaxcons.NonNeg()}, strict=False)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a is b, out, params))


# --- paths and masks -------------------------------------------------------------------------


def test_paths_lists_every_leaf():
    assert jaxcons.paths(_params()) == [
        "params/Block_1/Dense_0/bias",
        "params/Block_1/Dense_0/kernel",
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
        "step",
    ]


def test_mask_builds_a_bool_tree():
    m = jaxcons.mask(_params(), "**/kernel")
    assert m == {
        "params": {
            "Dense_0": {"kernel": True, "bias": False},
            "Block_1": {"Dense_0": {"kernel": True, "bias": False}},
        },
        "step": False,
    }
    assert jaxcons.mask({"a": jnp.ones(2)}, lambda p, leaf: leaf.ndim == 1) == {"a": True}


def test_mask_strict_error_and_non_strict():
    with pytest.raises(
        ValueError,
        match=re.escape("mask rule '**/kernal' matches no parameter. Closest paths: 'kernel'"),
    ):
        jaxcons.mask({"kernel": jnp.ones(1), "bias": jnp.ones(1)}, "**/kernal")
    assert jaxcons.mask({"kernel": jnp.ones(1)}, "nothing", strict=False) == {"kernel": False}


def test_mask_drives_optax_masked():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    grads = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full(2, 2.0)}
    tx = optax.masked(optax.sgd(0.5), jaxcons.mask(params, "**/kernel"))
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["kernel"], np.zeros((2, 2), np.float32))
    # Masked-out updates pass through optax.masked untouched (the raw gradient).
    np.testing.assert_array_equal(updates["bias"], np.full(2, 2.0, np.float32))
    callable_mask = optax.masked(optax.sgd(0.5), lambda p: jaxcons.mask(p, "bias"))
    updates, _ = callable_mask.update(grads, callable_mask.init(params), params)
    np.testing.assert_array_equal(updates["bias"], np.full(2, -1.0, np.float32))
    np.testing.assert_array_equal(updates["kernel"], grads["kernel"])


# --- resolution once per structure -----------------------------------------------------------


class _Counter:
    def __init__(self, predicate):
        self.calls = 0
        self.predicate = predicate
        self.__name__ = "counter"

    def __call__(self, path, leaf):
        self.calls += 1
        return self.predicate(path, leaf)


def test_resolution_is_cached_per_structure():
    pattern = _Counter(lambda p, leaf: p.endswith("kernel"))
    rules = Rules({pattern: "k"})
    first = rules.resolve(_params())
    n = pattern.calls
    assert n == 5  # one call per leaf
    # Same structure, new values: no new calls, and the very same resolution.
    other = jax.tree_util.tree_map(lambda x: x + 1, _params())
    assert rules.resolve(other) is first
    assert rules.resolve(_params()) is first
    assert pattern.calls == n
    # A new shape is a new structure: resolved again, once.
    reshaped = {**_params(), "step": jnp.zeros(3, jnp.int32)}
    rules.resolve(reshaped)
    rules.resolve(reshaped)
    assert pattern.calls == 2 * n
    # And a new dtype too.
    cast = {**_params(), "step": jnp.zeros((), jnp.float32)}
    rules.resolve(cast)
    assert pattern.calls == 3 * n


def test_resolution_and_checks_happen_once_across_jitted_steps():
    pattern = _Counter(lambda p, leaf: p.endswith("kernel"))
    checks = []

    class Checked(jaxcons.Constraint):
        def __call__(self, w):
            return jnp.clip(w, -1.0, 1.0)

        def check(self, shape, path):
            checks.append((shape, path))

    params = _params()
    del params["step"]  # sgd would multiply an int leaf by a float: keep the tree floating.
    tx = optax.chain(optax.sgd(0.1), jaxcons.constrain({pattern: Checked()}))
    state = tx.init(params)
    n = pattern.calls
    assert n == 4
    assert sorted(checks) == [
        ((3, 4), "params/Dense_0/kernel"),
        ((4, 2), "params/Block_1/Dense_0/kernel"),
    ]

    @jax.jit
    def step(params, state):
        grads = jax.tree_util.tree_map(jnp.ones_like, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
    # Tracers have the same structure, shapes and dtypes: the init-time resolution is reused.
    assert pattern.calls == n
    assert len(checks) == 2

"""Models: output shapes and exact parameter counts, BatchNorm modes, dtypes, config errors.

All four models of `create_model` (cnn, resnet, mlp, logreg) are counted by hand.
"""

import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamlab import config_dict, models
from adamlab.training import train_state
from adamlab.training.train_state import param_count

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/ as others do
from benchmarks import init_compile  # noqa: E402  (its model list: the one the test checks)


def _shapes(model, image_shape):
    """Parameter and output shapes without running anything (jax.eval_shape: no compute)."""
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return variables, logits


def _cnn_count(height, channels=1, features=(32, 64), dense=128, classes=10):
    """conv 3x3 (+bias) per block, 2x2 max pool after each block, dense, classifier."""
    count, c_in, size = 0, channels, height
    for f in features:
        count += 9 * c_in * f + f
        c_in, size = f, size // 2
    flat = size * size * c_in
    return count + flat * dense + dense + dense * classes + classes


def _resnet_count(stage_sizes=(3, 3, 3), filters=16, classes=10, channels=3):
    """Bias-free convs, BatchNorm scale+bias (2 per channel), projection where the shape changes."""
    count = 9 * channels * filters + 2 * filters
    c_in = filters
    for i, blocks in enumerate(stage_sizes):
        f = filters * 2**i
        for j in range(blocks):
            count += 9 * c_in * f + 2 * f + 9 * f * f + 2 * f
            if c_in != f or (i > 0 and j == 0):
                count += c_in * f + 2 * f
            c_in = f
    return count + c_in * classes + classes


def _dense_count(sizes):
    """Dense layers (kernel + bias) between consecutive widths."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


@pytest.mark.parametrize(
    "name,image_shape,expected",
    [
        ("cnn", (8, 8, 1), 53_002),  # 8 -> 4 -> 2: dense 2*2*64*128
        ("cnn", (28, 28, 1), 421_642),  # 28 -> 14 -> 7: dense 7*7*64*128
        ("resnet", (32, 32, 3), 272_474),  # ResNet-20, "0.27M" in He et al. 2016, Table 6
        ("mlp", (28, 28, 1), 1_796_010),  # Kingma & Ba 2015: 784 -> 1000 -> 1000 -> 10
        ("logreg", (8, 8, 1), 650),  # 64 -> 10
    ],
)
def test_output_shape_and_parameter_count(name, image_shape, expected):
    model = models.create_model({"name": name}, num_classes=10)
    variables, logits = _shapes(model, image_shape)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    pixels = int(np.prod(image_shape))
    hand_count = {
        "cnn": lambda: _cnn_count(image_shape[0]),
        "resnet": _resnet_count,
        "mlp": lambda: _dense_count((pixels, 1000, 1000, 10)),
        "logreg": lambda: _dense_count((pixels, 10)),
    }[name]()
    assert param_count(variables["params"]) == hand_count == expected
    assert ("batch_stats" in variables) == (name == "resnet")


def test_fields_of_another_model_are_ignored():
    """`--config.model.name=mlp` on the CNN config: the CNN's fields do not reach the MLP."""
    cnn_config = {"name": "mlp", "features": (8,), "dense_features": 16, "hidden": (12,)}
    model = models.create_model(cnn_config, num_classes=3)
    assert model == models.MLP(num_classes=3, hidden=(12,))
    variables, _ = _shapes(model, (8, 8, 1))
    assert param_count(variables["params"]) == _dense_count((64, 12, 3))
    logreg = models.create_model({"name": "logreg", "hidden": (12,), "dropout_rate": 0.5}, 3)
    assert logreg == models.LogisticRegression(num_classes=3)


def test_cnn_pools_only_while_the_image_is_large_enough():
    # Three blocks on 8x8: 8 -> 4 -> 2 -> 1; a 4th block would see 1x1 and must not pool to 0.
    model = models.create_model({"name": "cnn", "features": (4, 4, 4, 4)}, num_classes=3)
    variables, logits = _shapes(model, (8, 8, 1))
    assert logits.shape == (2, 3)
    assert variables["params"]["Dense_0"]["kernel"].shape == (1 * 1 * 4, 128)


@pytest.mark.parametrize("shape", [(3, 8, 8, 5), (3, 7, 7, 5), (2, 3, 28, 28, 4)])
def test_reshape_max_pool_equals_flax_max_pool_and_its_gradient(shape):
    """Random normals have no ties, so values and gradients must agree exactly (odd sizes crop)."""
    x = jax.random.normal(jax.random.key(0), shape)

    def flax_pool(x):
        flat = nn.max_pool(x.reshape(-1, *shape[-3:]), (2, 2), strides=(2, 2))
        return flat.reshape(*shape[:-3], *flat.shape[1:])

    np.testing.assert_array_equal(models.max_pool_2x2(x), flax_pool(x))
    weights = jax.random.normal(jax.random.key(1), flax_pool(x).shape)
    loss = lambda pool: lambda x: jnp.sum(pool(x) * weights)  # noqa: E731
    np.testing.assert_array_equal(
        jax.grad(loss(models.max_pool_2x2))(x), jax.grad(loss(flax_pool))(x)
    )


@pytest.fixture(scope="module")
def tiny_resnet():
    model = models.create_model({"name": "resnet", "stage_sizes": (1, 1), "num_filters": 4}, 3)
    x = jax.random.normal(jax.random.key(1), (8, 8, 8, 3)) * 2.0 + 1.0
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x)
    return model, variables, x


def test_resnet_batch_stats_update_in_train_mode_only(tiny_resnet):
    model, variables, x = tiny_resnet
    stem_mean = variables["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_array_equal(stem_mean, 0.0)  # initial running mean

    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    _, updated = apply(variables, x, train=True, mutable=("batch_stats",))
    new_mean = updated["batch_stats"]["BatchNorm_0"]["mean"]
    # momentum 0.9: running = 0.9 * 0 + 0.1 * batch mean of the stem conv output.
    conv = variables["params"]["Conv_0"]["kernel"]
    stem = jax.lax.conv_general_dilated(
        x, conv, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(new_mean, 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)

    # Eval mode uses the running statistics and cannot change them.
    logits, same = apply(variables, x, train=False, mutable=("batch_stats",))
    jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], variables["batch_stats"])
    # ...and gives different outputs from train mode (batch vs running statistics).
    train_logits, _ = apply(variables, x, train=True, mutable=("batch_stats",))
    assert not np.allclose(logits, train_logits)


@pytest.fixture(scope="module")
def cnn_variables():
    """Default-CNN parameters on 8x8; dtype and dropout do not change the parameters."""
    model = models.create_model({"name": "cnn"}, num_classes=10)
    return jax.jit(lambda k: model.init(k, jnp.ones((1, 8, 8, 1)), train=False))(jax.random.key(0))


def test_bfloat16_computes_in_bfloat16_keeps_float32_params_and_logits(cnn_variables):
    model = models.create_model({"name": "cnn", "dtype": "bfloat16"}, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(cnn_variables, x)
    assert logits.dtype == jnp.float32
    reference_model = models.create_model({"name": "cnn"}, num_classes=10)
    reference = jax.jit(lambda v, x: reference_model.apply(v, x, train=False))(cnn_variables, x)
    # Same float32 params; the outputs differ only by bfloat16 rounding (8-bit mantissa, ~0.4%
    # per op, so a few % after 4 layers of accumulation).
    assert not np.array_equal(logits, reference)
    np.testing.assert_allclose(logits, reference, rtol=5e-2, atol=5e-2)


def test_dropout_is_active_in_train_mode_only(cnn_variables):
    model = models.create_model({"name": "cnn", "dropout_rate": 0.5}, num_classes=10)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))

    @jax.jit
    def run(seed):
        key = jax.random.key(seed)
        train = model.apply(cnn_variables, x, train=True, rngs={"dropout": key})
        evaluate = model.apply(cnn_variables, x, train=False, rngs={"dropout": key})
        return train, evaluate

    train_1, eval_1 = run(1)
    train_1_again, _ = run(1)
    train_2, eval_2 = run(2)
    np.testing.assert_array_equal(eval_1, eval_2)  # eval mode: no dropout, key unused
    np.testing.assert_array_equal(train_1, train_1_again)  # same key, same mask
    assert not np.allclose(train_1, train_2)
    assert not np.allclose(train_1, eval_1)


def test_mlp_dropout_after_each_layer_in_train_mode_only():
    model = models.create_model({"name": "mlp", "hidden": (32, 32)}, num_classes=10)  # rate 0.5
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    variables = model.init(jax.random.key(1), x, train=False)
    apply = jax.jit(model.apply, static_argnames="train")
    rngs = lambda seed: {"dropout": jax.random.key(seed)}  # noqa: E731
    np.testing.assert_array_equal(
        apply(variables, x, train=False, rngs=rngs(1)),
        apply(variables, x, train=False, rngs=rngs(2)),
    )
    assert not np.allclose(
        apply(variables, x, train=True, rngs=rngs(1)), apply(variables, x, train=True, rngs=rngs(2))
    )


def test_default_model_config_builds_the_default_model():
    config = models.default_model_config("cnn")
    assert config.to_dict() == {
        "name": "cnn",
        "dtype": "float32",
        "features": (32, 64),
        "dense_features": 128,
        "dropout_rate": 0.0,
    }
    assert models.create_model(config, 10) == models.CNN(num_classes=10)
    assert set(models.default_model_config("resnet")) == {
        "name",
        "dtype",
        "stage_sizes",
        "num_filters",
    }
    assert models.default_model_config("mlp").to_dict() == {
        "name": "mlp",
        "dtype": "float32",
        "hidden": (1000, 1000),
        "dropout_rate": 0.5,
        "activation": "relu",
    }
    assert set(models.default_model_config("logreg")) == {"name", "dtype"}


@pytest.mark.parametrize(
    "config,match",
    [
        ({"name": "vit"}, "model.name='vit' is not a model; allowed: cnn, resnet, mlp, logreg"),
        ({"name": "cnn", "dtype": "float16"}, "allowed: float32, bfloat16"),
        # A field of no model is a typo (fields of the other models are ignored, see above).
        ({"name": "cnn", "featurse": (8,)}, r"\['featurse'\] are fields of no model; for 'cnn'"),
        ({"name": "mlp", "dropout_rate": 1.0}, r"must be in \[0, 1\)"),
        ({"name": "mlp", "hidden": (8, 0)}, "model.hidden=.* ints >= 1"),
        ({"name": "mlp", "activation": "swish"}, "model.activation='swish' is unknown"),
        ({"name": "cnn", "dropout_rate": 1.0}, r"must be in \[0, 1\)"),
        ({"name": "cnn", "features": ()}, "non-empty sequence"),
        ({"name": "resnet", "stage_sizes": (2, 0)}, "ints >= 1"),
    ],
)
def test_bad_model_config_is_a_clear_error(config, match):
    with pytest.raises(ValueError, match=match):
        models.create_model(config, num_classes=10)


def test_num_classes_must_be_at_least_two():
    with pytest.raises(ValueError, match="num_classes=1 must be an int >= 2"):
        models.create_model({"name": "cnn"}, num_classes=1)


# (config/dtype, model fields, image shape) of each distinct model the shipped configs build:
# the init benchmark's list, so that the test and the measurement cover the same models.
_SHIPPED = init_compile.shipped_models()


def _assert_init_as_default_compile(fields, image_shape, seeds):
    """`create_train_state`'s init, compiled on CPU at LLVM level 1 for its compile time,
    gives the bits of the same init compiled with XLA's default options."""
    model = models.create_model(fields, 10)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    default = jax.jit(train_state._init, static_argnums=0)
    for seed in seeds:
        key = jax.random.key(seed)
        ours = jax.tree.leaves(train_state._init_variables(model, key, dummy))
        theirs = jax.tree.leaves(default(model, key, dummy))
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the level-1 compile is CPU's")
def test_init_compiled_fast_on_cpu_gives_the_default_compiles_bits():
    """The offline default's model (digits CNN), two seeds."""
    fields = config_dict.load_config("digits").model.to_dict()
    _assert_init_as_default_compile(fields, init_compile.IMAGE_SHAPES["digits"], seeds=(0, 1))


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the level-1 compile is CPU's")
@pytest.mark.parametrize("name, fields, image_shape", _SHIPPED, ids=[m[0] for m in _SHIPPED])
def test_init_of_every_shipped_model_compiled_fast_gives_the_default_bits(
    name, fields, image_shape
):
    _assert_init_as_default_compile(fields, image_shape, seeds=(0, 1, 2, 3))


def test_init_under_a_trace_is_part_of_the_enclosing_program():
    """Compiler options are a top-level program's: under `eval_shape` (the restore target)
    and inside a jit, `create_train_state` traces into the caller's program, same shapes."""
    import optax

    model = models.create_model(config_dict.load_config("digits").model, 10)
    state = lambda seed: train_state.create_train_state(seed, model, optax.adam(1e-3), (8, 8, 1))
    concrete = state(jax.random.key(0))
    abstract = jax.eval_shape(state, jax.random.key(0))
    jitted = jax.jit(state)(jax.random.key(0))
    shape = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
    assert shape(abstract) == shape(concrete)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(concrete), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

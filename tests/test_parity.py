"""The same weights give the same model in PyTorch and Keras: outputs, gradients, an Adam step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch

from denoisebench.core.spec import ModelSpec, shared_weights
from denoisebench.tf_backend import model as model_tf
from denoisebench.torch_backend import model as model_torch

SPECS = [
    ModelSpec(),  # the paper's model
    ModelSpec(encoder_widths=(8, 16, 16, 32), kernel_size=5, image_size=32),  # deeper, k=5
    ModelSpec(encoder_widths=(8, 16), kernel_size=4, activation="elu", output_activation="linear"),
]


def batch(spec: ModelSpec, dtype=np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((3, spec.image_size, spec.image_size, spec.in_channels)).astype(dtype)


def torch_forward(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    out = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    return out.permute(0, 2, 3, 1).detach().numpy()


def test_default_spec_is_the_papers_model():
    spec = ModelSpec()
    assert [(layer.kind, layer.in_channels, layer.out_channels) for layer in spec.layers()] == [
        ("conv", 3, 32),
        ("conv", 32, 64),
        ("conv", 64, 128),
        ("conv_transpose", 128, 64),
        ("conv_transpose", 64, 32),
        ("conv_transpose", 32, 3),
    ]
    assert spec.layers()[-1].activation == "sigmoid"
    assert spec.num_parameters() == 186_371
    assert sum(p.numel() for p in model_torch.build_model(spec).parameters()) == 186_371
    assert model_tf.build_model(spec).count_params() == 186_371
    assert 40e6 < spec.forward_flops_per_image() < 42e6


def explicit_same(spec: ModelSpec, weights: list[np.ndarray]):
    """Keras' 'same' model written out with explicit asymmetric pads and crops, in float64:
    the construction the flip identity replaces (written here, not taken from the suite)."""
    import torch.nn.functional as F

    before, after = spec.pad
    tensors = [torch.from_numpy(w.astype(np.float64)) for w in weights]
    acts = {"relu": torch.relu, "elu": F.elu, "sigmoid": torch.sigmoid, "linear": lambda x: x}

    def forward(x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(spec.layers()):
            w, b = tensors[2 * i], tensors[2 * i + 1]
            if layer.kind == "conv":
                x = F.conv2d(F.pad(x, (before, after, before, after)), w, b, stride=spec.stride)
            else:
                x = F.conv_transpose2d(x, w, b, stride=spec.stride)
                h, wd = x.shape[-2:]
                x = x[..., before : h - after, before : wd - after]
            x = acts[layer.activation](x)
        return x

    return forward


@pytest.mark.parametrize(
    "spec",
    [*SPECS, ModelSpec(encoder_widths=(4, 8), kernel_size=2, stride=1, image_size=16)],
    ids=["paper", "deep-k5", "k4-elu", "k2-s1-fallback"],
)
def test_flip_identity_equals_explicit_padding(spec):
    """build_model's natural network on flipped images, flipped back, is the explicit-padding
    Keras-'same' model: to rounding in float64."""
    weights = [w.astype(np.float64) for w in shared_weights(spec, seed=4)]
    tm = model_torch.build_model(spec).double()
    model_torch.set_weights(tm, weights)
    x = torch.from_numpy(batch(spec, np.float64)).permute(0, 3, 1, 2)
    with torch.no_grad():
        np.testing.assert_allclose(
            tm(x).numpy(), explicit_same(spec, weights)(x).numpy(), atol=1e-12
        )
    kinds = {type(m).__name__ for m in tm.net}
    if spec.stride == 2:  # the natural layers: no pad or crop module, symmetric padding
        assert not kinds & {"ZeroPad2d", "Crop2d"}
        assert all(m.padding == (spec.pad[1],) * 2 for m in tm.net if hasattr(m, "padding"))
    np.testing.assert_array_equal(model_torch.get_weights(tm)[0], weights[0])  # port round trip


@pytest.mark.parametrize("spec", SPECS, ids=["paper", "deep-k5", "k4-elu"])
def test_forward_torch_to_keras(spec):
    torch.manual_seed(1)
    tm = model_torch.build_model(spec)  # PyTorch's native init, ported into Keras
    km = model_tf.build_model(spec)
    model_tf.set_weights(km, model_torch.get_weights(tm))
    x = batch(spec)
    np.testing.assert_allclose(km(x).numpy(), torch_forward(tm, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec", SPECS, ids=["paper", "deep-k5", "k4-elu"])
def test_forward_keras_to_torch(spec):
    tf.keras.utils.set_random_seed(2)
    km = model_tf.build_model(spec)  # Keras' native init, ported into PyTorch
    tm = model_torch.build_model(spec)
    model_torch.set_weights(tm, model_tf.get_weights(km))
    x = batch(spec)
    np.testing.assert_allclose(torch_forward(tm, x), km(x).numpy(), atol=1e-5, rtol=0)
    # and the round trip is lossless
    for a, b in zip(model_torch.get_weights(tm), model_tf.get_weights(km), strict=True):
        np.testing.assert_array_equal(a, b)


def test_forward_float64_agrees_tightly():
    spec = ModelSpec()
    weights = [w.astype(np.float64) for w in shared_weights(spec, seed=3)]
    tm = model_torch.build_model(spec).double()
    km = model_tf.build_model(spec, dtype="float64")
    model_torch.set_weights(tm, weights)
    model_tf.set_weights(km, weights)
    x = batch(spec, np.float64)
    np.testing.assert_allclose(km(x).numpy(), torch_forward(tm, x), atol=1e-12, rtol=0)


def test_symmetric_padding_would_not_match():
    """Guards the reason for the explicit padding: PyTorch's padding=1 is a different model."""
    spec = ModelSpec()
    weights = shared_weights(spec, seed=4)
    km = model_tf.build_model(spec)
    model_tf.set_weights(km, weights)
    conv = torch.nn.Conv2d(3, 32, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weights[0]))
        conv.bias.copy_(torch.from_numpy(weights[1]))
    x = batch(spec)
    torch_first = torch.relu(conv(torch.from_numpy(x).permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    keras_first = km.layers[0](x).numpy()
    assert np.abs(torch_first.detach().numpy() - keras_first).max() > 1e-3


@pytest.mark.parametrize("loss", ["mae", "mse", "ssim"])
def test_gradients_agree(loss):
    spec = ModelSpec()
    weights = shared_weights(spec, seed=5)
    tm = model_torch.build_model(spec)
    km = model_tf.build_model(spec)
    model_torch.set_weights(tm, weights)
    model_tf.set_weights(km, weights)
    noisy, clean = batch(spec, seed=6), batch(spec, seed=7)

    t_loss = model_torch.loss_fn(loss)(
        tm(torch.from_numpy(noisy).permute(0, 3, 1, 2)), torch.from_numpy(clean).permute(0, 3, 1, 2)
    )
    t_loss.backward()
    t_grads = model_torch.get_gradients(tm)  # canonical layout, as get_weights

    with tf.GradientTape() as tape:
        k_loss = model_tf.loss_fn(loss)(clean, km(noisy, training=True))
    k_grads = tape.gradient(k_loss, km.trainable_variables)
    # Keras -> canonical layout, through the same conversion the port uses
    k_canonical = []
    for i in range(0, len(k_grads), 2):
        k_canonical += [k_grads[i].numpy().transpose(3, 2, 0, 1), k_grads[i + 1].numpy()]

    assert abs(t_loss.item() - float(k_loss)) < 1e-5
    assert len(t_grads) == len(k_canonical) == 12
    for tg, kg in zip(t_grads, k_canonical, strict=True):
        assert tg.shape == kg.shape
        np.testing.assert_allclose(tg, kg, atol=1e-5, rtol=1e-4)


def test_adam_steps_agree():
    """Three Adam updates from the same weights on the same batches land on the same weights.

    The epsilon is tiny on purpose: PyTorch adds it to sqrt(v_hat), Keras to sqrt(v) (Kingma and
    Ba's "epsilon hat"), so with the same epsilon Keras' is effectively larger by
    1/sqrt(1 - beta2**t) (31.6x at step 1). For gradients near epsilon's size the updates then
    differ; this is a real difference between the two Adams, documented in docs/method.md ("Adam").
    In float64, so that rounding cannot flip the sign of a near-zero gradient (Adam turns any
    gradient, however small, into a step of about lr).
    """
    spec = ModelSpec(encoder_widths=(8, 16), image_size=32)
    weights = [w.astype(np.float64) for w in shared_weights(spec, seed=8)]
    tm = model_torch.build_model(spec).double()
    km = model_tf.build_model(spec, dtype="float64")
    model_torch.set_weights(tm, weights)
    model_tf.set_weights(km, weights)
    kwargs = {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-16}
    t_opt = torch.optim.Adam(
        tm.parameters(), lr=kwargs["lr"], betas=(kwargs["b1"], kwargs["b2"]), eps=kwargs["eps"]
    )
    k_opt = tf.keras.optimizers.Adam(
        learning_rate=kwargs["lr"], beta_1=kwargs["b1"], beta_2=kwargs["b2"], epsilon=kwargs["eps"]
    )
    t_loss_fn, k_loss_fn = model_torch.loss_fn("mae"), model_tf.loss_fn("mae")
    for step in range(3):
        noisy, clean = batch(spec, np.float64, 10 + step), batch(spec, np.float64, 20 + step)
        t_opt.zero_grad()
        t_loss_fn(
            tm(torch.from_numpy(noisy).permute(0, 3, 1, 2)),
            torch.from_numpy(clean).permute(0, 3, 1, 2),
        ).backward()
        t_opt.step()
        with tf.GradientTape() as tape:
            k_loss = k_loss_fn(clean, km(noisy, training=True))
        k_opt.apply_gradients(
            zip(tape.gradient(k_loss, km.trainable_variables), km.trainable_variables, strict=True)
        )
    moved = max(
        np.abs(a - b).max() for a, b in zip(model_torch.get_weights(tm), weights, strict=True)
    )
    assert moved > 1e-3  # the weights really changed
    # Keras keeps its hyperparameters (and so 1 - beta2**t) in float32 even for float64
    # variables: a relative error near 1e-5 of lr per step, far below the 1e-3 a step moves
    for a, b in zip(model_torch.get_weights(tm), model_tf.get_weights(km), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)


def test_set_weights_rejects_wrong_shapes():
    spec = ModelSpec()
    weights = shared_weights(spec, seed=0)
    with pytest.raises(ValueError, match="weight 0"):
        model_torch.set_weights(model_torch.build_model(spec), [weights[0][:1], *weights[1:]])
    with pytest.raises(ValueError, match="12 weight tensors, got 11"):
        model_tf.set_weights(model_tf.build_model(spec), weights[:-1])

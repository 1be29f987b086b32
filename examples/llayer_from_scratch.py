"""Experiment 0 — the course's L-layer network, forward and backward written by hand in jax.numpy.

Each layer caches Z and A on the way forward; the way back applies the textbook rules
dZ = dA·g'(Z), dW = dZ·A_prevᵀ/m, db = mean(dZ), dA_prev = Wᵀ·dZ. Plain gradient descent; He or 0.01
initialisation. `tests/test_examples.py` checks these gradients against `jax.grad` of the same loss.
Run: python examples/llayer_from_scratch.py [--layers 20,7,5,1] [--init he|small]
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np

ACT = {
    "relu": (lambda z: jnp.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
    "sigmoid": (jax.nn.sigmoid, lambda z: jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z))),
    "tanh": (jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2),
}


def init_params(layer_dims, init="he", seed=0, dtype=jnp.float32):
    """W[l] has shape (n_l, n_{l-1}) as in the course; "he" = N(0, 2/n_{l-1}), "small" = N(0, 0.01²)."""
    key = jax.random.PRNGKey(seed)
    params = []
    for n_prev, n in itertools.pairwise(layer_dims):
        key, sub = jax.random.split(key)
        scale = jnp.sqrt(2.0 / n_prev) if init == "he" else 0.01
        params.append({"W": jax.random.normal(sub, (n, n_prev), dtype) * scale, "b": jnp.zeros((n, 1), dtype)})
    return params


def forward(params, X, activations):
    """X: (n_x, m). Returns the output A_L and the caches (A_prev, Z) of every layer."""
    A, caches = X, []
    for p, act in zip(params, activations, strict=True):
        Z = p["W"] @ A + p["b"]
        caches.append((A, Z))
        A = ACT[act][0](Z)
    return A, caches


def cost(AL, Y):
    eps = 1e-12
    return -jnp.mean(Y * jnp.log(AL + eps) + (1 - Y) * jnp.log(1 - AL + eps))


def backward(params, caches, AL, Y, activations):
    """The hand-written backward pass; the output layer is a sigmoid with cross-entropy."""
    m = Y.shape[1]
    grads = [None] * len(params)
    dA = -(Y / AL - (1 - Y) / (1 - AL))
    for layer in reversed(range(len(params))):
        A_prev, Z = caches[layer]
        dZ = dA * ACT[activations[layer]][1](Z)
        grads[layer] = {"W": dZ @ A_prev.T / m, "b": jnp.mean(dZ, axis=1, keepdims=True)}
        dA = params[layer]["W"].T @ dZ
    return grads


def train(X, Y, layer_dims, activations, init="he", lr=0.0075, iterations=2500, seed=0, every=500):
    params = init_params(layer_dims, init, seed)

    @jax.jit
    def step(params):
        AL, caches = forward(params, X, activations)
        grads = backward(params, caches, AL, Y, activations)
        return jax.tree.map(lambda p, g: p - lr * g, params, grads), cost(AL, Y)

    costs = []
    for i in range(iterations):
        params, c = step(params)
        if i % every == 0 or i == iterations - 1:
            costs.append(float(c))
            print(f"iteration {i:5d}  cost {float(c):.4f}")
    return params, costs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="20,7,5,1", help="hidden sizes and the single output unit")
    p.add_argument("--init", default="he", choices=("he", "small"))
    p.add_argument("--iterations", type=int, default=2500)
    p.add_argument("--lr", type=float, default=0.0075)
    args = p.parse_args()
    from jaxnets.data import load_dataset

    # a binary task on the real digits: "is it a zero?", 8×8 pixels flattened into the columns of X
    splits = load_dataset("digits", val_split=0.0, test_split=0.2, seed=0)
    def xy(ds):
        return (jnp.asarray(np.asarray(ds.sources, np.float32).reshape(len(ds), -1).T / 255.0),
                jnp.asarray((ds.labels == 0).astype(np.float32)[None, :]))
    X, Y = xy(splits.train)
    Xt, Yt = xy(splits.test)
    sizes = [X.shape[0], *map(int, args.layers.split(","))]
    acts = ["relu"] * (len(sizes) - 2) + ["sigmoid"]
    params, _ = train(X, Y, sizes, acts, args.init, args.lr, args.iterations)
    accuracy = float(jnp.mean((forward(params, Xt, acts)[0] > 0.5) == Yt))
    print(f"test accuracy {accuracy:.4f} ({args.init} init)")


if __name__ == "__main__":
    main()

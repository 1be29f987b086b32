"""The whole training state as one pytree, so a step is a pure function of it and a checkpoint is it."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ..models import create_model, init_variables
from ..runtime.sharding import replicated


@flax.struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any  # {} for models without BatchNorm
    opt_state: Any
    step: jax.Array
    rng: jax.Array  # raw uint32 key data: saves and restores like any array
    ema: Any = flax.struct.field(default_factory=dict)  # {"params", "batch_stats"} averaged, or {} when off

    @property
    def variables(self) -> dict:
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}

    @property
    def eval_variables(self) -> dict:
        """What evaluation, checkpoints' users and the service see: the weights' average when there is one."""
        if not self.ema:
            return self.variables
        return {"params": self.ema["params"], **({"batch_stats": self.ema["batch_stats"]} if self.batch_stats
                                                 else {})}


def fresh_ema(params: Any, batch_stats: Any) -> dict:
    """An average that starts at these weights (copies: the state is donated, and one buffer cannot be twice)."""
    return jax.tree.map(jnp.array, {"params": params, "batch_stats": batch_stats})


def create_state(model_name: str, num_classes: int, model_options: dict, input_shape: tuple[int, ...],
                 tx: optax.GradientTransformation, seed: int, mesh=None, ema: bool = False) -> tuple[Any, TrainState]:
    """(model, state) with the state replicated over the data mesh, as the jitted steps will return it."""
    model = create_model(model_name, num_classes, **model_options)
    variables = init_variables(model, input_shape, seed)
    params = variables["params"]
    state = TrainState(
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1),
        ema=fresh_ema(params, variables.get("batch_stats", {})) if ema else {},
    )
    return model, jax.device_put(state, replicated(mesh))

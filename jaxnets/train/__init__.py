"""Training: config, state, the jitted train step, optimizers and the fit loop."""

from .config import TrainConfig
from .loop import FitResult, NonFiniteLossError, TrainingInterrupted, fit
from .optim import OptimConfig, make_optimizer
from .state import TrainState, create_state
from .steps import StepConfig, make_eval_step, make_train_step

__all__ = [
    "FitResult", "NonFiniteLossError", "OptimConfig", "StepConfig", "TrainConfig", "TrainState", "TrainingInterrupted",
    "create_state", "fit", "make_eval_step", "make_optimizer", "make_train_step",
]

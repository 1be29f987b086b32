"""Training: config, state, jitted steps, optimizers, metrics and the fit loop."""

from .config import TrainConfig
from .loop import FitResult, NonFiniteLossError, TrainingInterrupted, evaluate_loader, fit
from .metrics import format_report, per_class_report
from .optim import OptimConfig, make_optimizer
from .state import TrainState, create_state
from .steps import StepConfig, forward, make_eval_step, make_train_step, probabilities

__all__ = [
    "FitResult", "NonFiniteLossError", "OptimConfig", "StepConfig", "TrainConfig", "TrainState", "TrainingInterrupted",
    "create_state", "evaluate_loader", "fit", "format_report", "forward", "make_eval_step", "make_optimizer",
    "make_train_step", "per_class_report", "probabilities",
]

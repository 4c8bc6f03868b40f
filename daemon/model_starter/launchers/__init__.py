"""Ways to run a model: one interface, so the lifecycle policy never knows which it drives."""

from model_starter.launchers.base import Launcher, StartError
from model_starter.launchers.process import ProcessLauncher, model_environment

__all__ = ["Launcher", "ProcessLauncher", "StartError", "model_environment"]

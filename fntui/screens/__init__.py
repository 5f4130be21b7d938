"""The wizard's step screens, by step name, plus the browser and the modal screens."""

from __future__ import annotations

from fntui.screens.auth import AuthScreen
from fntui.screens.data import DataScreen
from fntui.screens.hardware import HardwareScreen
from fntui.screens.model import ModelScreen
from fntui.screens.networks import NetworksScreen
from fntui.screens.run import RunScreen
from fntui.screens.summary import SummaryScreen
from fntui.screens.template import TemplateScreen
from fntui.screens.training import TrainingScreen
from fntui.screens.welcome import WelcomeScreen

STEP_SCREENS = {
    screen.STEP: screen
    for screen in (WelcomeScreen, HardwareScreen, AuthScreen, ModelScreen, DataScreen, TemplateScreen,
                   NetworksScreen, TrainingScreen, RunScreen, SummaryScreen)
}

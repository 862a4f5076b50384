"""A local Cloud Tasks v2 emulator speaking real gRPC, for tests and development."""

from ..oidc import EMULATOR_OIDC_CONFIG_METHOD as OIDC_CONFIG_METHOD
from .records import DispatchRecord
from .server import Emulator

__all__ = ["OIDC_CONFIG_METHOD", "DispatchRecord", "Emulator"]

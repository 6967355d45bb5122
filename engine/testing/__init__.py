"""Fakes that tests and users can script: a fault-injecting OpenAI-compatible server."""

from engine.testing.fault_server import Fault, FaultPlan, FaultServer, ReceivedRequest

__all__ = ["Fault", "FaultPlan", "FaultServer", "ReceivedRequest"]

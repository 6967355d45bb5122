"""Fakes that tests and users can script: a fault-injecting OpenAI-compatible server."""

from featurelm.engine.testing.fault_server import Fault, FaultPlan, FaultServer, ReceivedRequest

__all__ = ["Fault", "FaultPlan", "FaultServer", "ReceivedRequest"]

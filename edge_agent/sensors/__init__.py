"""Sensor sources: where the agent's measurements come from.

Every source implements :class:`edge_agent.sensors.base.SensorSource` and returns a
:class:`~edge_agent.sensors.base.Reading` per call. Backends (Modbus TCP/RTU, file replay) live one per
file with their config model; :mod:`edge_agent.sensors.registry` imports only the backend a config names.
Register maps are data (YAML), decoded by the pure functions in :mod:`edge_agent.sensors.registers`.
"""

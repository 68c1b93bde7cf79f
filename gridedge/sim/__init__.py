"""Stand-ins for a real site on the central side: a simulated site served over real Modbus, from
measured data, and its ``gridedge sim`` command. The device package never imports it.
"""

"""Protocol emulators: the mock plant served over real protocols on loopback.

The same :class:`drivers.mock.plant.Plant` as the in-process mock, advanced on a real clock,
behind Modbus TCP, Modbus RTU on a pseudo-terminal and SCPI over TCP servers, each speaking
the instrument file of the device it stands for, with injectable faults. Real drivers and
third-party tools talk to it over real sockets.
"""

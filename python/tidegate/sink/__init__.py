"""The sink: writes the core's per-tenant line-protocol buffers to InfluxDB or to LP files.

scheduler.py decides when each tenant is flushed and retried, retry.py how long to wait,
influx.py and files.py are the two targets, replay.py sends files to InfluxDB later.
"""

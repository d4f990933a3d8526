"""NATS mode: HTTP edges publish validated line protocol to JetStream, workers write it.

`settings` holds the frozen NATS configuration, `stream` the connection (reconnecting forever)
and the streams and consumer it creates or updates at start, `edge` the publisher behind the
HTTP routes, `worker` the durable pull consumer that writes to the sink and acks after the write.
"""

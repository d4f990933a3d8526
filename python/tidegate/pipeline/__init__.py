"""The per-message pipeline every entrance shares: parse (the entrance's) → admission → field
types → store (buffers, write-ahead log, or JetStream) → telemetry_latest → rate-limit refusals
→ counts. The HTTP routes (http/), the NATS edge and the NATS worker's inputs (nats/) call it;
it imports neither of them."""

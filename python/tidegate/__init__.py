"""tidegate: a high-rate HTTP telemetry ingest gateway with a Rust hot path."""

__version__ = "0.1.0"

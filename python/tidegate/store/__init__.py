"""The registry of tenants and devices and Shelly's power logs, on PostgreSQL or SQLite."""

"""The fleet's receiving end: MQTT receiver with shared subscriptions, SQLite/PostgreSQL store, CLI."""

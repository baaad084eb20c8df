"""The ground floor every room's HTTP API stands on (OGC API building blocks shared by all)."""

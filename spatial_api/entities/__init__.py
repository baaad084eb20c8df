"""Geographic entities (PLACEHOLDER, lead, issue 17)."""

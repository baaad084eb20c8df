"""The underground room: utility surveys (CJJ 61 pipe points and segments), their checks, and what
lies under a parcel."""

"""Command-line front end (thin: every command calls library code)."""

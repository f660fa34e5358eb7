"""Small servers the gateway benchmark compares aiml with (never shipped)."""

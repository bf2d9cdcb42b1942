"""Shared by both tiers: the fake key that must never leak."""
FAKE_KEY = "sk-test-NEVER-LOG-7f3a9c"

"""Shared by both tiers: the secrets that must never leak (a user's key, the access tokens)."""
FAKE_KEY = "sk-test-NEVER-LOG-7f3a9c"
ACCESS_TOKENS = ("tok-alpha-1-NEVER-LOG", "tok-beta-2-NEVER-LOG")
SECRETS = (FAKE_KEY, *ACCESS_TOKENS)

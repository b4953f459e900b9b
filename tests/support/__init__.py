"""Test helpers shared by the kit's test suite (local servers that stand in for remote services)."""

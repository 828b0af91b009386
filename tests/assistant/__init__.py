"""Tests of corolla.assistant."""

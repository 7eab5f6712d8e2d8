"""Helpers shared by the test suite: real servers started and stopped by the tests."""

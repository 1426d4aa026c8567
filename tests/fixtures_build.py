"""Fixtures for real buildah builds (package repositories made at test time)."""

"""Fixtures for real registry and S3 servers on 127.0.0.1."""

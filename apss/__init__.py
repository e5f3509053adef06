"""APSS: a self-hosted Automated Payment & Settlement System for virtual goods."""

__version__ = "0.1.0"

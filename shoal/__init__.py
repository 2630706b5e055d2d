"""Shoal: a self-hosted batch computing service speaking the Azure Batch data-plane API."""
__version__ = "0.1.0"

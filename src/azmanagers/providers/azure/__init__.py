"""The azure provider: VM scale sets through the official Azure SDKs."""

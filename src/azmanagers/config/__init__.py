"""Configuration: AZMANAGERS_HOME paths, the manifest and the templates."""

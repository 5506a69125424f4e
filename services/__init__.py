"""The three cxloop services, the CLI and the embedded local stack."""

"""The wire contract and the plumbing every cxloop service shares."""

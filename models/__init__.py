"""mlabatch.models."""

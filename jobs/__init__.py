"""mlabatch.jobs."""

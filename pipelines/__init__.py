"""mlabatch.pipelines."""

"""Reports: the generated results page (page) and its images (plots)."""

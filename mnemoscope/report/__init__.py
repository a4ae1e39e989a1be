"""The pages: the study's report (page) and its sections (context_use, scaling, growth, findings),
the comparison's page (compare)."""

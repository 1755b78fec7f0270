"""Tables and plots made from results JSON: a run's report, a comparison's, shared formatting."""

"""Reports on trained models: slide-level evaluation of feature stores, patch scoring, and the comparison table
and figure of several runs."""
